"""Command line: argument parsing only; the work happens in the modules it calls."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from e2eproxy import __version__
from e2eproxy.config import (
    Config,
    load_config,
    mask_url,
    store_only_config,
    with_overrides,
)
from e2eproxy.ctl_cli import add_ctl_parser, normalize_ctl_argv, run_ctl
from e2eproxy.errors import E2EProxyError
from e2eproxy.keys_cli import add_keys_parser, run_keys
from e2eproxy.log import setup_logging
from e2eproxy.store_cli import add_store_parser, run_store


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="e2eproxy",
        description="A transparent end-to-end-encrypting reverse proxy for Matrix clients.",
    )
    parser.add_argument("--version", action="version", version=f"e2eproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the proxy")
    run.add_argument("--config", type=Path, help="TOML configuration file")
    run.add_argument("--homeserver", help="homeserver URL (overrides the config)")
    run.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:8009)")
    run.add_argument("--data-dir", help="where the store lives (default: the user data dir)")
    run.add_argument("--log-level", help="debug, info, warning or error")

    check = commands.add_parser("check-config", help="validate a config file and print it")
    check.add_argument("file", type=Path)
    add_keys_parser(commands)
    add_store_parser(commands)
    add_ctl_parser(commands)
    return parser


def _effective(config: Config) -> dict[str, Any]:
    """The configuration as plain data, secrets masked."""
    data = dataclasses.asdict(config)
    data["servers"] = {s["name"]: s for s in data["servers"]}
    for server in data["servers"].values():
        server.pop("name")
        server["listen"] = f"{server['listen']['host']}:{server['listen']['port']}"
    if config.metrics.listen is not None:
        data["metrics"]["listen"] = str(config.metrics.listen)
    passphrase = config.store_passphrase()
    data["store"]["passphrase"] = "<set>" if passphrase else "<not set>"
    if config.store.url is not None:
        data["store"]["url"] = mask_url(config.store.url)
    plain: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return plain


def main(argv: list[str] | None = None) -> int:
    argv = normalize_ctl_argv(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "ctl":
            setup_logging("warning")
            return run_ctl(args)  # prints its own errors (as JSON with --json)
        if args.command == "check-config":
            config = load_config(args.file)
            print(json.dumps(_effective(config), indent=2, sort_keys=True))
            return 0
        # `run --homeserver` (and the store commands) need no [servers] table in the file.
        needs_servers = args.command == "run" and args.homeserver is None
        base = load_config(args.config, require_servers=needs_servers) if args.config else None
        if args.command in ("keys", "store"):
            setup_logging("warning")
            config = store_only_config(base, args.data_dir)
            run_command = run_keys if args.command == "keys" else run_store
            return asyncio.run(run_command(args, config))
        config = with_overrides(
            base,
            homeserver=args.homeserver,
            listen=args.listen,
            data_dir=args.data_dir,
            log_level=args.log_level,
        )
        setup_logging(config.log.level, config.log.format)
        from e2eproxy.event_loop import run
        from e2eproxy.service import serve

        run(serve(config))
        return 0
    except E2EProxyError as exc:
        print(f"e2eproxy: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
