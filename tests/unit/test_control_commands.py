"""The generic control commands (ping, accounts), the command table, and how a request's
--user/--device find one account across every served homeserver."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

import pytest

from e2eproxy import __version__
from e2eproxy.control import commands
from e2eproxy.control.commands import command_table, find_account
from e2eproxy.control.handlers import (
    bool_arg,
    choice_arg,
    find_registered,
    optional_str_arg,
    str_arg,
)
from e2eproxy.control.protocol import ControlError, ControlRequest, Handler
from e2eproxy.proxy.registry import AccountRegistry
from e2eproxy.store import AccountKey
from e2eproxy.types import DeviceId, UserId


def registry(homeserver: str, *devices: tuple[str, str]) -> Any:
    accounts = {}
    for user, device in devices:
        key = AccountKey(UserId(user), DeviceId(device))
        accounts[key] = SimpleNamespace(key=key, homeserver=homeserver)
    return SimpleNamespace(homeserver=homeserver, accounts=accounts)


@pytest.fixture
def registries() -> Sequence[AccountRegistry]:
    return cast(Sequence[AccountRegistry], [
        registry("https://work.example/", ("@bot:work.example", "WORK1"),
                 ("@two:work.example", "A"), ("@two:work.example", "B")),
        registry("https://home.example/", ("@bot:home.example", "HOME1")),
    ])


async def test_ping_says_version_and_pid(registries: Sequence[AccountRegistry]) -> None:
    result = await command_table(registries)["ping"](ControlRequest("ping"))
    assert result == {"version": __version__, "pid": os.getpid()}


async def test_accounts_lists_every_homeserver(registries: Sequence[AccountRegistry]) -> None:
    result = await command_table(registries)["accounts"](ControlRequest("accounts"))
    assert result == [
        {"user_id": "@bot:home.example", "device_id": "HOME1",
         "homeserver": "https://home.example/"},
        {"user_id": "@bot:work.example", "device_id": "WORK1",
         "homeserver": "https://work.example/"},
        {"user_id": "@two:work.example", "device_id": "A", "homeserver": "https://work.example/"},
        {"user_id": "@two:work.example", "device_id": "B", "homeserver": "https://work.example/"},
    ]


async def test_the_table_reads_registries_that_join_later() -> None:
    live: list[Any] = []
    table = command_table(cast(Sequence[AccountRegistry], live))
    assert await table["accounts"](ControlRequest("accounts")) == []
    live.append(registry("https://hs/", ("@u:hs", "D")))
    assert len(await table["accounts"](ControlRequest("accounts"))) == 1


def test_a_command_defined_twice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def clash(registries: Sequence[AccountRegistry]) -> dict[str, Handler]:
        async def ping(request: ControlRequest) -> Any:
            return None

        return {"ping": ping}

    monkeypatch.setattr(commands, "COMMAND_GROUPS", (commands.generic_commands, clash))
    with pytest.raises(ValueError, match="'ping' is defined twice"):
        command_table([])


def test_find_account_by_user_and_device(registries: Sequence[AccountRegistry]) -> None:
    assert find_account(registries, "@bot:home.example", None).key.device_id == "HOME1"
    assert find_account(registries, "@two:work.example", "B").key.device_id == "B"
    found_registry, account = find_registered(registries, "@bot:work.example", "WORK1")
    assert found_registry is registries[0]
    assert account.key.user_id == "@bot:work.example"


def test_find_account_names_the_candidates(registries: Sequence[AccountRegistry]) -> None:
    with pytest.raises(ControlError) as ambiguous:
        find_account(registries, "@two:work.example", None)
    assert ambiguous.value.code == "ambiguous_account"
    assert "A, B" in ambiguous.value.message
    assert "--device" in ambiguous.value.message
    with pytest.raises(ControlError) as wrong_device:
        find_account(registries, "@two:work.example", "C")
    assert wrong_device.value.code == "no_account"
    assert "A, B" in wrong_device.value.message
    with pytest.raises(ControlError) as nobody:
        find_account(registries, "@nobody:work.example", None)
    assert nobody.value.code == "no_account"
    with pytest.raises(ControlError) as no_user:
        find_account(registries, None, None)
    assert no_user.value.code == "bad_request"


def test_the_same_device_on_two_homeservers_is_ambiguous() -> None:
    both = cast(Sequence[AccountRegistry], [
        registry("https://a/", ("@u:hs", "D")), registry("https://b/", ("@u:hs", "D")),
    ])
    with pytest.raises(ControlError, match="https://a/, https://b/") as twice:
        find_account(both, "@u:hs", "D")
    assert twice.value.code == "ambiguous_account"


def test_argument_helpers_check_types() -> None:
    request = ControlRequest("x", args={"s": "v", "n": None, "b": True, "i": 3, "c": "b"})
    assert str_arg(request, "s") == "v"
    assert optional_str_arg(request, "n") is None
    assert optional_str_arg(request, "missing") is None
    assert bool_arg(request, "b") is True
    assert bool_arg(request, "missing") is False
    assert choice_arg(request, "c", ("a", "b")) == "b"
    for bad in (lambda: str_arg(request, "i"), lambda: str_arg(request, "n"),
                lambda: optional_str_arg(request, "i"), lambda: bool_arg(request, "s"),
                lambda: choice_arg(request, "s", ("a", "b"))):
        with pytest.raises(ControlError) as refused:
            bad()
        assert refused.value.code == "bad_request"


async def test_stats_counts_tasks_accounts_and_fds(registries: Sequence[AccountRegistry]) -> None:
    stats = command_table(registries)["stats"]
    before = await stats(ControlRequest("stats"))
    assert before["pid"] == os.getpid()
    assert before["accounts"] == 4  # every device of every homeserver
    assert before["threads"] >= 1
    blocker = asyncio.Event()
    waiters = [asyncio.create_task(blocker.wait()) for _ in range(3)]
    read, write = os.pipe()  # two more descriptors
    try:
        after = await stats(ControlRequest("stats"))
    finally:
        os.close(read)
        os.close(write)
        blocker.set()
        await asyncio.gather(*waiters)
    assert after["tasks"] == before["tasks"] + 3
    assert after["open_fds"] == before["open_fds"] + 2
