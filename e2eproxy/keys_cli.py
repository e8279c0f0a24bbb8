"""`e2eproxy keys export|import`: the standard Megolm key export file, in and out of the store.

Safe while the proxy runs: the store's writes are transactions, and an import merges by the
better-session rule, so neither side can undo the other's keys.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from e2eproxy.config import Config
from e2eproxy.errors import E2EProxyError
from e2eproxy.key_export import KeyExportError
from e2eproxy.store import export_room_keys, import_room_keys, open_store


def add_keys_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="export or import room keys (Element's file format)")
    actions = keys.add_subparsers(dest="keys_action", required=True)
    for action, verb in (("export", "write"), ("import", "read")):
        sub = actions.add_parser(action, help=f"{verb} a MEGOLM SESSION DATA file")
        sub.add_argument("file", type=Path)
        sub.add_argument("--user", required=True, help="the Matrix user id, e.g. @bot:example.org")
        sub.add_argument("--device", help="only this device of the user")
        sub.add_argument("--passphrase-file", type=Path, help="read the file's passphrase here")
        sub.add_argument("--config", type=Path, help="TOML configuration file (for the store)")
        sub.add_argument("--data-dir", help="where the store lives (default: the user data dir)")


def _file_passphrase(args: argparse.Namespace, confirm: bool) -> str:
    if args.passphrase_file is not None:
        try:
            passphrase = str(args.passphrase_file.read_text()).rstrip("\r\n")
        except OSError as exc:
            raise E2EProxyError(f"cannot read {args.passphrase_file}: {exc.strerror}") from exc
    elif not sys.stdin.isatty():
        raise E2EProxyError("no terminal to ask for the passphrase: use --passphrase-file")
    else:
        passphrase = getpass.getpass("Passphrase for the key file: ")
        if confirm and getpass.getpass("Repeat the passphrase: ") != passphrase:
            raise E2EProxyError("the passphrases differ")
    if not passphrase:
        raise E2EProxyError("an empty passphrase would leave the keys unprotected")
    return passphrase


def _progress(done: int, total: int) -> None:
    print(f"\r{done}/{total} sessions", end="", file=sys.stderr, flush=True)


def _write_private(path: Path, text: str) -> None:
    """Created 0600 from the start (never readable by others, even for a moment)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode on open
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
    except OSError as exc:
        raise E2EProxyError(f"cannot write {path}: {exc.strerror}") from exc


async def run_keys(args: argparse.Namespace, config: Config) -> int:
    store = await open_store(config.store, config.store_passphrase())
    try:
        if args.keys_action == "export":
            passphrase = _file_passphrase(args, confirm=True)
            armored = await export_room_keys(
                store, args.user, passphrase, _progress, device_id=args.device
            )
            _write_private(args.file, armored)
            print(f"\nExported the room keys of {args.user} to {args.file}", file=sys.stderr)
        else:
            try:
                data = args.file.read_text()
            except OSError as exc:
                raise E2EProxyError(f"cannot read {args.file}: {exc.strerror}") from exc
            passphrase = _file_passphrase(args, confirm=False)
            try:
                imported, total = await import_room_keys(
                    store, args.user, data, passphrase, _progress, device_id=args.device
                )
            except KeyExportError as exc:
                raise E2EProxyError(f"{args.file}: {exc}") from exc
            print(f"\nImported {imported} of {total} room keys for {args.user}", file=sys.stderr)
    finally:
        await store.close()
    return 0
