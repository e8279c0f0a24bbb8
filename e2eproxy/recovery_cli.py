"""`e2eproxy ctl recovery ...`: secret storage, key backup and recovery of an account.

The recovery key is shown once (or written to --recovery-key-file, created 0600); passphrases
and passwords come from files or are asked without echo, and only travel over the 0600 control
socket.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e2eproxy.control.protocol import ControlError
from e2eproxy.errors import E2EProxyError

Control = Callable[[str, dict[str, Any]], Any]
PASSWORD_REQUIRED = "password_required"


def add_recovery_parser(actions: argparse._SubParsersAction[argparse.ArgumentParser],
                        common: argparse.ArgumentParser) -> None:
    recovery = actions.add_parser("recovery", parents=[common],
                                  help="secret storage, key backup and recovery")
    sub = recovery.add_subparsers(dest="recovery_action", required=True, metavar="ACTION")
    sub.add_parser("status", parents=[common],
                   help="secret storage, the key backup, what is left to upload")
    for name, about in (("enable", "set up recovery: cross-signing, secret storage, backup"),
                        ("reset", "new cross-signing keys, secret storage and backup")):
        action = sub.add_parser(name, parents=[common], help=about)
        action.add_argument("--recovery-key-file", type=Path,
                            help="write the new recovery key there (mode 0600) instead of "
                                 "printing it")
        action.add_argument("--passphrase-file", type=Path,
                            help="derive the key from this passphrase (it then opens it too)")
        action.add_argument("--password-file", type=Path,
                            help="the account password, if the homeserver asks for it")
        if name == "reset":
            action.add_argument("--yes", action="store_true",
                                help="yes, replace the keys (other devices must recover again)")
    recover = sub.add_parser("recover", parents=[common],
                             help="take the keys from secret storage and restore the backup")
    recover.add_argument("--recovery-key-file", type=Path, help="the recovery key")
    recover.add_argument("--passphrase-file", type=Path, help="or the passphrase")


def read_secret_file(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise E2EProxyError(f"cannot read {path}: {exc.strerror}") from exc
    if not text:
        raise E2EProxyError(f"{path} is empty")
    return text


def write_new_secret_file(path: Path, text: str) -> None:
    """Created 0600 from its first byte; never over an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise E2EProxyError(f"{path} exists: the recovery key is not written over it") from None
    except OSError as exc:
        raise E2EProxyError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")


def _ask(prompt: str) -> str:
    if not sys.stdin.isatty():
        raise E2EProxyError(f"{prompt.rstrip(': ')}: no terminal to ask (use a file option)")
    answer = getpass.getpass(prompt)
    if not answer:
        raise E2EProxyError("nothing given")
    return answer


def run_recovery(args: argparse.Namespace, control: Control,
                 show: Callable[[Any, Callable[[Any], str]], None]) -> int:
    action = args.recovery_action
    if action == "status":
        show(control("recovery.status", {}), render_status)
        return 0
    if action == "recover":
        if args.recovery_key_file:
            secret = read_secret_file(args.recovery_key_file)
        elif args.passphrase_file:
            secret = read_secret_file(args.passphrase_file)
        else:
            secret = _ask("Recovery key or passphrase: ")
        show(control("recovery.recover", {"recovery_key": secret}), render_recovered)
        return 0
    return _enable(args, control, show)


def _enable(args: argparse.Namespace, control: Control,
            show: Callable[[Any, Callable[[Any], str]], None]) -> int:
    reset = args.recovery_action == "reset"
    if reset and not args.yes:
        raise ControlError("confirm", "a reset replaces the cross-signing keys, secret storage "
                                      "and key backup: run it again with --yes")
    if args.recovery_key_file and args.recovery_key_file.exists():
        raise E2EProxyError(f"{args.recovery_key_file} exists: choose a new file")
    call_args: dict[str, Any] = {
        "passphrase": read_secret_file(args.passphrase_file) if args.passphrase_file else None,
        "password": read_secret_file(args.password_file) if args.password_file else None,
        "confirm": reset,
    }
    cmd = "recovery.reset" if reset else "recovery.enable"
    try:
        result = control(cmd, call_args)
    except ControlError as exc:
        if exc.code != PASSWORD_REQUIRED or args.password_file is not None:
            raise
        print(exc.message, file=sys.stderr)
        call_args["password"] = _ask("Account password: ")
        result = control(cmd, call_args)
    if args.recovery_key_file:
        write_new_secret_file(args.recovery_key_file, result["recovery_key"])
        shown = {**result, "recovery_key": f"written to {args.recovery_key_file}"}
    else:
        shown = result
    show(shown, render_enabled)
    return 0


def render_enabled(result: Any) -> str:
    return (f"Recovery is set up (key backup version {result.get('backup_version')}).\n"
            f"Recovery key: {result.get('recovery_key')}\n"
            "Keep it safe: it opens this account's keys and message history; it is not shown "
            "again.")


def render_recovered(result: Any) -> str:
    imported = result.get("imported") or []
    lines = [f"Cross-signing keys taken: {', '.join(imported) if imported else 'none'}"]
    version = result.get("backup_version")
    lines.append(f"Key backup version {version}: restoring in the background "
                 "(see `ctl recovery status`)" if version else "No key backup to restore from.")
    return "\n".join(lines)


def render_status(result: Any) -> str:
    storage = result.get("secret_storage") or {}
    backup = result.get("backup") or {}
    restore = backup.get("restore") or {}
    cross = result.get("cross_signing") or {}
    lines = [
        f"Secret storage: {storage.get('default_key') or 'none'}; secrets stored: "
        f"{', '.join(storage.get('secrets') or []) or 'none'}",
        f"Key backup on the server: {backup.get('server_version') or 'none'}; in use here: "
        f"{backup.get('in_use') or 'none'} ({'with' if backup.get('has_key') else 'without'} "
        f"its key); room keys left to upload: {backup.get('to_upload', 0)}",
        f"Restore: {restore.get('imported', 0)} of {restore.get('total', 0)} imported"
        f"{' (running)' if restore.get('running') else ''}"
        f"{' error: ' + str(restore['error']) if restore.get('error') else ''}",
        f"Cross-signing: identity {'yes' if cross.get('has_identity') else 'no'}, this device "
        f"{'signed' if cross.get('device_signed') else 'not signed'}",
    ]
    return "\n".join(lines)
