"""`e2eproxy ctl ...`: commands for the running proxy, sent over its control socket.

A thin client: each subcommand is one control command (or, for `verify` without a subcommand,
a short dialogue of them); the proxy does the work. `--json` prints the raw result (errors as
JSON on stderr), for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e2eproxy.config import load_config, store_only_config
from e2eproxy.control import render
from e2eproxy.control.client import call
from e2eproxy.control.protocol import ControlError, socket_path
from e2eproxy.control.verify_flow import VerifyTarget, verify_interactively
from e2eproxy.errors import E2EProxyError
from e2eproxy.recovery_cli import add_recovery_parser, run_recovery

TRUST_LEVELS = ("verified", "blacklisted", "ignored", "unset")
# `ctl verify ACTION ...`; with no action word, `ctl verify @user` is "interactive".
VERIFY_ACTIONS = (
    "list", "start", "accept", "show", "confirm", "mismatch", "cancel", "interactive"
)
# Options of `ctl` that take a value (normalize_ctl_argv must skip it).
VALUE_OPTIONS = frozenset(
    {"--data-dir", "--config", "--user", "--device", "--password-file", "--room",
     "--recovery-key-file", "--passphrase-file"}
)
PASSWORD_REQUIRED = "password_required"


def user_id(value: str) -> str:
    """argparse type: a Matrix user id."""
    if not value.startswith("@") or ":" not in value:
        raise argparse.ArgumentTypeError(f"{value!r} is not a Matrix user id like @bot:example.org")
    return value


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    """The options every ctl command takes, before or after its name: only the top level
    has defaults (SUPPRESS below it, so a lower level never resets what was given above)."""
    default: Any = None if top else argparse.SUPPRESS
    parser.add_argument("--data-dir", default=default,
                        help="the data dir of the running proxy (default: the user data dir)")
    parser.add_argument("--config", type=Path, default=default,
                        help="the proxy's TOML configuration file (for its data dir)")
    parser.add_argument("--json", action="store_true",
                        default=False if top else argparse.SUPPRESS,
                        help="print the raw result as JSON (errors as JSON on stderr)")
    parser.add_argument("--user", type=user_id, default=default,
                        help="the account: the Matrix user id of a device the proxy holds")
    parser.add_argument("--device", default=default,
                        help="the account's device id, when the proxy holds several of the user")


def add_ctl_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ctl = commands.add_parser(
        "ctl", help="talk to the running proxy: accounts, cross-signing, trust, verification",
        description="Commands for the running proxy, over its control socket in the data dir.",
    )
    _common(ctl, top=True)
    common = argparse.ArgumentParser(add_help=False)
    _common(common, top=False)
    actions = ctl.add_subparsers(dest="ctl_action", required=True, metavar="COMMAND")
    actions.add_parser("ping", parents=[common], help="is the proxy running? its version, pid")
    actions.add_parser("accounts", parents=[common], help="the devices whose keys it holds")
    actions.add_parser("stats", parents=[common],
                       help="what the process holds now: accounts, tasks, threads, open files")
    actions.add_parser("health", parents=[common],
                       help="is it ready (store open, homeservers answering)? exits 1 if not")

    cross = actions.add_parser("cross-signing", parents=[common],
                               help="the account's cross-signing identity")
    cross_actions = cross.add_subparsers(dest="cross_action", required=True, metavar="ACTION")
    cross_actions.add_parser("status", parents=[common], help="its keys and whether trusted")
    boot = cross_actions.add_parser(
        "bootstrap", parents=[common], help="create the identity, sign this device, upload"
    )
    boot.add_argument("--password-file", type=Path,
                      help="the account password, if the homeserver asks (else asked here)")

    devices = actions.add_parser("devices", parents=[common],
                                 help="a user's identity and devices, with their trust")
    devices.add_argument("other", nargs="?", type=user_id, metavar="@USER",
                         help="whose devices (default: the --user's own)")

    trust = actions.add_parser(
        "trust", parents=[common], help="set a device's local trust, or accept a new identity",
        usage="%(prog)s --user U @USER DEVICE {verified,blacklisted,ignored,unset}\n"
        "       %(prog)s --user U @USER --accept-identity-change",
    )
    trust.add_argument("other", type=user_id, metavar="@USER")
    trust.add_argument("device_id", nargs="?", metavar="DEVICE")
    trust.add_argument("level", nargs="?", metavar="LEVEL", help=", ".join(TRUST_LEVELS))
    trust.add_argument("--accept-identity-change", action="store_true",
                       help="accept @USER's new cross-signing identity")
    _add_verify_parser(actions, common)
    add_recovery_parser(actions, common)


def _add_verify_parser(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    verify = actions.add_parser(
        "verify", parents=[common], help="verify another device with emoji (SAS)",
        usage="%(prog)s --user U @USER [DEVICE]     (the whole flow, here)\n"
        "       %(prog)s ACTION --user U ...",
        description="Without an action: request a verification of @USER (one DEVICE, or all "
        "their devices), show the emoji, ask whether they match, and finish.",
    )
    verify_actions = verify.add_subparsers(dest="verify_action", required=True, metavar="ACTION")
    verify_actions.add_parser("list", parents=[common], help="the verifications in progress")
    for name, about in (("start", "request a verification, print its id"),
                        ("interactive", "the whole flow in this terminal (the default)")):
        sub = verify_actions.add_parser(name, parents=[common], help=about)
        sub.add_argument("other", type=user_id, metavar="@USER")
        sub.add_argument("other_device", nargs="?", metavar="DEVICE")
        sub.add_argument("--room", metavar="ROOM_ID",
                         help="request it in this room (default: to DEVICE, or your DM)")
    for name, about in (("accept", "accept a request from another device"),
                        ("show", "its phase, and the emoji and numbers to compare"),
                        ("confirm", "the emoji match"),
                        ("mismatch", "the emoji differ: cancel it as a mismatch"),
                        ("cancel", "stop it (unwanted, or given up)")):
        sub = verify_actions.add_parser(name, parents=[common], help=about)
        sub.add_argument("flow_id", metavar="ID", help="as `verify list` or `verify start` show")


def normalize_ctl_argv(argv: list[str]) -> list[str]:
    """`ctl verify --user U @other [DEVICE]` (the interactive flow, named by no subcommand)
    becomes `ctl verify interactive ...`: argparse cannot mix subcommands and positionals."""
    words = _positionals(argv)
    if len(words) < 3 or [argv[i] for i in words[:2]] != ["ctl", "verify"]:
        return argv
    if argv[words[2]] in VERIFY_ACTIONS:
        return argv
    at = words[1] + 1
    return [*argv[:at], "interactive", *argv[at:]]


def _positionals(argv: list[str]) -> list[int]:
    """The indexes of the words that are not options nor their values."""
    found: list[int] = []
    skip = False
    for index, word in enumerate(argv):
        if skip:
            skip = False
        elif word == "--":
            found += range(index + 1, len(argv))
            break
        elif word.startswith("-"):
            skip = word in VALUE_OPTIONS
        else:
            found.append(index)
    return found


def _socket(args: argparse.Namespace) -> Path:
    base = load_config(args.config) if args.config else None
    return socket_path(store_only_config(base, args.data_dir).store.data_dir)


def run_ctl(args: argparse.Namespace) -> int:
    """Run one `ctl` subcommand; errors are one line (JSON with --json) and exit status 1."""
    try:
        path = _socket(args)
        if args.ctl_action == "verify":
            return _verify(args, path)
        if args.ctl_action == "cross-signing" and args.cross_action == "bootstrap":
            return _bootstrap(args, path)
        if args.ctl_action == "recovery":
            need_user(args)
            return run_recovery(args, lambda cmd, call_args: control(path, args, cmd, call_args),
                                lambda result, human: show(args, result, human))
        return _simple(args, path)
    except E2EProxyError as exc:
        print_error(args, exc)
        return 1


def print_error(args: argparse.Namespace, exc: E2EProxyError) -> None:
    if args.json:
        code = exc.code if isinstance(exc, ControlError) else "error"
        print(json.dumps({"error": {"code": code, "message": str(exc)}}), file=sys.stderr)
    else:
        print(f"e2eproxy: {exc}", file=sys.stderr)


def show(args: argparse.Namespace, result: Any, human: Callable[[Any], str]) -> None:
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(human(result))


def need_user(args: argparse.Namespace) -> str:
    if args.user is None:
        raise ControlError("bad_request", f"`ctl {args.ctl_action}` needs --user @user:server")
    return str(args.user)


def control(path: Path, args: argparse.Namespace, cmd: str, call_args: dict[str, Any]) -> Any:
    """One command, in an event loop of its own (a prompt between two of them blocks nothing)."""
    return asyncio.run(call(path, cmd, user=args.user, device=args.device, args=call_args))


def _simple(args: argparse.Namespace, path: Path) -> int:
    action = args.ctl_action
    if action == "ping":
        show(args, control(path, args, "ping", {}), render.ping)
        return 0
    if action == "accounts":
        show(args, control(path, args, "accounts", {}), render.accounts)
        return 0
    if action == "stats":
        show(args, control(path, args, "stats", {}), render.stats)
        return 0
    if action == "health":
        result = control(path, args, "health", {})
        show(args, result, render.health)
        return 0 if isinstance(result, dict) and result.get("status") == "ready" else 1
    user = need_user(args)
    if action == "cross-signing":
        result = control(path, args, "cross-signing.status", {})
        show(args, result, lambda r: render.cross_signing_status(r, user))
    elif action == "devices":
        other = args.other or user
        result = control(path, args, "devices", {"user_id": other})
        show(args, result, lambda r: render.devices(r, other, user))
    else:
        cmd, call_args = _trust_request(args)
        result = control(path, args, cmd, call_args)
        show(args, result, lambda _: render.trust(args.device_id, args.other, args.level))
    return 0


def _trust_request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.accept_identity_change:
        if args.device_id is not None:
            raise ControlError(
                "bad_request", "trust --accept-identity-change takes no DEVICE nor LEVEL"
            )
        return "trust.accept-identity-change", {"user_id": args.other}
    if args.device_id is None or args.level not in TRUST_LEVELS:
        raise ControlError(
            "bad_request",
            "trust needs @USER DEVICE and one of " + ", ".join(TRUST_LEVELS)
            + " (or @USER --accept-identity-change)",
        )
    return "trust", {"user_id": args.other, "device_id": args.device_id, "trust": args.level}


def _read_password(path: Path) -> str:
    try:
        password = path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise E2EProxyError(f"cannot read {path}: {exc.strerror}") from exc
    if not password:
        raise E2EProxyError(f"{path} is empty")
    return password


def _ask_password(user: str, why: ControlError) -> str:
    if not sys.stdin.isatty():
        raise ControlError(why.code, f"{why.message} (no terminal to ask: use --password-file)")
    print(why.message, file=sys.stderr)
    password = getpass.getpass(f"Password of {user}: ")
    if not password:
        raise E2EProxyError("no password given")
    return password


def _bootstrap(args: argparse.Namespace, path: Path) -> int:
    user = need_user(args)
    password = _read_password(args.password_file) if args.password_file else None
    try:
        result = control(path, args, "cross-signing.bootstrap", {"password": password})
    except ControlError as exc:
        if exc.code != PASSWORD_REQUIRED or args.password_file is not None:
            raise
        # Asked between two event loops: Ctrl-C at the prompt just stops the program.
        password = _ask_password(user, exc)
        result = control(path, args, "cross-signing.bootstrap", {"password": password})
    show(args, result, render.bootstrap)
    return 0


def _verify(args: argparse.Namespace, path: Path) -> int:
    user, action = need_user(args), args.verify_action
    if action == "interactive":
        target = VerifyTarget(args.other, args.other_device, args.room)
        return asyncio.run(verify_interactively(
            path, user, args.device, target, json_output=args.json
        ))
    if action == "list":
        show(args, control(path, args, "verify.list", {}), render.verify_list)
    elif action == "start":
        call_args = VerifyTarget(args.other, args.other_device, args.room).start_args()
        result = control(path, args, "verify.start", call_args)
        show(args, result, lambda r: render.verify_started(r, user))
    elif action == "show":
        show(args, control(path, args, "verify.show", {"id": args.flow_id}), render.verify_show)
    else:
        result = control(path, args, f"verify.{action}", {"id": args.flow_id})
        done = {"accept": "Accepted", "confirm": "Confirmed", "mismatch": "Cancelled (mismatch)",
                "cancel": "Cancelled"}[action]
        show(args, result, lambda _: f"{done} verification {args.flow_id}.")
    return 0
