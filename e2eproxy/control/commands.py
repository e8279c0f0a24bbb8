"""The control commands `e2eproxy run` serves: one table, built from groups of commands.

To add commands, write a module of them (say `trust_commands.py`) with one function that
takes the registries and returns its handlers by command name::

    from e2eproxy.control.handlers import find_account, str_arg

    def commands(registries: Sequence[AccountRegistry]) -> dict[str, Handler]:
        async def status(request: ControlRequest) -> Any:
            account = find_account(registries, request.user, request.device)
            ...
            return {"has_identity": ...}      # plain JSON data

        return {"cross-signing.status": status}

and list that function in COMMAND_GROUPS below (one line). Import the helpers from
`handlers.py`, not from here: this module imports the groups. `registries` is the live list of
the process's homeservers (one AccountRegistry each); read it when a command runs, not before.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from e2eproxy import __version__
from e2eproxy.control.handlers import find_account, find_registered
from e2eproxy.control.protocol import ControlRequest, Handler
from e2eproxy.control.recovery_commands import recovery_commands
from e2eproxy.control.trust_commands import trust_commands
from e2eproxy.proxy.registry import AccountRegistry

__all__ = ["COMMAND_GROUPS", "command_table", "find_account", "find_registered"]

CommandGroup = Callable[[Sequence[AccountRegistry]], Mapping[str, Handler]]


def generic_commands(registries: Sequence[AccountRegistry]) -> dict[str, Handler]:
    """`ping` (is it running, which version), `accounts` (the devices it holds) and `stats`
    (what the process holds now: for watching it over time, as bench/soak.py does)."""

    async def ping(request: ControlRequest) -> Any:
        return {"version": __version__, "pid": os.getpid()}

    async def accounts(request: ControlRequest) -> Any:
        held = [
            {
                "user_id": account.key.user_id,
                "device_id": account.key.device_id,
                "homeserver": registry.homeserver,
            }
            for registry in registries
            for account in registry.accounts.values()
        ]
        return sorted(held, key=lambda a: (a["user_id"], a["device_id"], a["homeserver"]))

    async def stats(request: ControlRequest) -> Any:
        return {
            "pid": os.getpid(),
            "tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
            "accounts": sum(len(registry.accounts) for registry in registries),
            "open_fds": _open_fds(),
        }

    return {"ping": ping, "accounts": accounts, "stats": stats}


def _open_fds() -> int | None:
    """This process's open file descriptors, where /proc tells (Linux); else None."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


# Every group of commands; add yours here, one line.
COMMAND_GROUPS: tuple[CommandGroup, ...] = (
    generic_commands,
    trust_commands,
    recovery_commands,
)


def command_table(registries: Sequence[AccountRegistry]) -> dict[str, Handler]:
    """Every command's handler, by name. A name two groups define is a bug, refused here."""
    table: dict[str, Handler] = {}
    for group in COMMAND_GROUPS:
        for name, handler in group(registries).items():
            if name in table:
                raise ValueError(f"the control command {name!r} is defined twice")
            table[name] = handler
    return table
