"""`e2eproxy store rekey`: lock the store with a new passphrase (or the keyring, or a key file).

Only the wrapped data key changes (one row, one transaction), so it is safe while the proxy
runs; the proxy keeps working with the key it holds, and needs the new passphrase from its next
start. The store is opened with the current passphrase from the usual places first.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from e2eproxy.config import Config
from e2eproxy.errors import E2EProxyError
from e2eproxy.store import open_store, secrets


def add_store_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    store = commands.add_parser("store", help="manage the key store")
    actions = store.add_subparsers(dest="store_action", required=True)
    rekey = actions.add_parser(
        "rekey",
        help="lock the store with a new passphrase (asked twice), the OS keyring or a key file; "
        "the current passphrase comes from E2EPROXY_STORE_PASSPHRASE or the config as usual",
    )
    target = rekey.add_mutually_exclusive_group()
    target.add_argument("--new-passphrase-file", type=Path, help="read the new passphrase here")
    target.add_argument("--keyring", action="store_true", help="keep the key in the OS keyring")
    target.add_argument("--key-file", action="store_true",
                        help="keep the key in a 0600 file in the data dir (protects copies only)")
    rekey.add_argument("--config", type=Path, help="TOML configuration file (for the store)")
    rekey.add_argument("--data-dir", help="where the store lives (default: the user data dir)")


def _new_passphrase(args: argparse.Namespace) -> str:
    if args.new_passphrase_file is not None:
        try:
            passphrase = str(args.new_passphrase_file.read_text()).rstrip("\r\n")
        except OSError as exc:
            raise E2EProxyError(f"cannot read {args.new_passphrase_file}: {exc.strerror}") from exc
    elif not sys.stdin.isatty():
        raise E2EProxyError("no terminal to ask for the new passphrase: use --new-passphrase-file")
    else:
        passphrase = getpass.getpass("New store passphrase: ")
        if getpass.getpass("Repeat it: ") != passphrase:
            raise E2EProxyError("the passphrases differ")
    if not passphrase:
        raise E2EProxyError("an empty passphrase would leave the store unprotected")
    return passphrase


def _new_source(
    args: argparse.Namespace, config: Config, current_kind: str
) -> secrets.KekSource:
    if args.keyring:
        if current_kind == "keyring":
            # Its one keyring entry would be overwritten before the database row: a crash in
            # between would leave the store unreadable. Nothing to change anyway.
            raise E2EProxyError("the store is already locked by the OS keyring")
        backend = secrets.usable_keyring()
        if backend is None:
            raise E2EProxyError("no usable OS keyring on this machine")
        return secrets.KeyringSource(backend)
    if args.key_file:
        return secrets.KeyFileSource(config.store.data_dir / secrets.KEY_FILE_NAME)
    return secrets.PassphraseSource(_new_passphrase(args))


async def run_store(args: argparse.Namespace, config: Config) -> int:
    store = await open_store(config.store, config.store_passphrase())
    try:
        source = _new_source(args, config, await store.backend.key_kind())
        await store.backend.rewrap(source)
    finally:
        await store.close()
    old_key_file = config.store.data_dir / secrets.KEY_FILE_NAME
    if source.kind != "keyfile" and old_key_file.exists():
        old_key_file.unlink()  # it unlocks nothing any more; key material should not linger
    print(f"The store is now locked by its {source.kind}; restart the proxy with it "
          "(E2EPROXY_STORE_PASSPHRASE, store.passphrase_file or the systemd credential).",
          file=sys.stderr)
    return 0
