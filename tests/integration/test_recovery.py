"""Recovery against the stub homeserver: enable (secret storage, cross-signing, a key backup the
uploader fills), recover on a wiped proxy (keys and history back, the device signed), a wrong key
refused, the on-demand restore of one key, a backup version replaced elsewhere noticed, and no
secret on the server or in the log unencrypted."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from e2eproxy.control.protocol import ControlError, ControlRequest
from e2eproxy.control.recovery_commands import recovery_commands
from e2eproxy.control.trust_commands import trust_commands
from e2eproxy.crypto.recovery_key import decode_recovery_key
from e2eproxy.proxy import recovery
from e2eproxy.proxy.app_keys import REGISTRY, UPSTREAM
from e2eproxy.store import MemoryStore
from tests.integration.conftest import RunningProxy, StartE2EEProxy
from tests.support.plain_client import PlainClient, encrypted_room_of, login_all
from tests.support.stub_homeserver import StubHomeserver

DEADLINE_S = 10.0


class Ctl:
    def __init__(self, proxy: RunningProxy, user: str) -> None:
        app = proxy.server.app
        assert app is not None
        registries = [app[REGISTRY]]
        self.table = {**trust_commands(registries), **recovery_commands(registries)}
        self.app, self.user = app, user

    async def __call__(self, cmd: str, **args: Any) -> Any:
        return await self.table[cmd](ControlRequest(cmd, self.user, None, args))

    def account(self) -> Any:
        [account] = [a for a in self.app[REGISTRY].accounts.values() if a.user_id == self.user]
        return account


async def until(what: str, probe: Callable[[], Awaitable[Any]]) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_S
    while not (value := await probe()):
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return value


async def history_bodies(client: PlainClient, room_id: str) -> list[str]:
    return [e["content"].get("body") for e in reversed(await client.messages(room_id))
            if e["type"] == "m.room.message"]


@pytest.fixture
async def enabled(stub: StubHomeserver, session: aiohttp.ClientSession,
                  start_e2ee_proxy: StartE2EEProxy) -> tuple[Ctl, PlainClient, str, str]:
    """Alice (and Bob) through one proxy; Alice set up recovery and her room keys are backed
    up. Returns her ctl, her client, the room and the recovery key."""
    proxy = await start_e2ee_proxy()
    alice, bob = await login_all(session, proxy.url, stub, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    for text in ("one", "two"):
        await bob.send_text(room_id, text)
    await alice.send_text(room_id, "three")
    assert await history_bodies(alice, room_id) == ["one", "two", "three"]
    ctl = Ctl(proxy, alice.user_id)
    made = await ctl("recovery.enable")
    assert decode_recovery_key(made["recovery_key"])  # the Matrix key format

    async def uploaded() -> Any:
        status = await ctl("recovery.status")
        return status if status["backup"]["to_upload"] == 0 else None

    status = await until("every room key backed up", uploaded)
    backup = status["backup"]
    assert backup["in_use"] == made["backup_version"] == backup["server_version"]
    assert set(status["secret_storage"]["secrets"]) == {
        "m.cross_signing.master", "m.cross_signing.self_signing", "m.cross_signing.user_signing",
        "m.megolm_backup.v1"}
    assert stub.backups.versions[alice.user_id][made["backup_version"]].count() >= 2
    return ctl, alice, room_id, made["recovery_key"]


async def test_recover_on_a_wiped_proxy_gives_back_keys_and_history(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
    enabled: tuple[Ctl, PlainClient, str, str],
) -> None:
    _ctl, alice, room_id, recovery_key = enabled
    fresh = await start_e2ee_proxy(store=MemoryStore())  # a new data dir: nothing of Alice's
    again = PlainClient(session, fresh.url)
    await again.login("alice")
    assert again.device_id != alice.device_id
    before = [e for e in await again.messages(room_id) if e["type"] == "m.room.message"]
    assert all(e["content"].get("org.e2eproxy.undecryptable") for e in before), before
    ctl = Ctl(fresh, again.user_id)
    with pytest.raises(ControlError) as wrong:
        await ctl("recovery.recover", recovery_key="EsTc LW2K PGiF wKEA 3As5 g5c4 BXwk qeeJ "
                                                   "ZJV8 Q9fu gUMN UE4d")
    assert wrong.value.code == "wrong_key"
    done = await ctl("recovery.recover", recovery_key=recovery_key)
    assert set(done["imported"]) == {"m.cross_signing.master", "m.cross_signing.self_signing",
                                      "m.cross_signing.user_signing"}

    async def restored() -> Any:
        status = await ctl("recovery.status")
        restore = status["backup"]["restore"]
        return status if not restore["running"] and restore["imported"] >= 2 else None

    status = await until("the backup restored", restored)
    assert status["backup"]["has_key"]
    assert await history_bodies(again, room_id) == ["one", "two", "three"]

    async def signed() -> Any:
        return (await ctl("cross-signing.status"))["device_signed"]

    await until("the new device signed with the recovered keys", signed)


async def test_one_missing_key_comes_from_the_backup_on_demand(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
    enabled: tuple[Ctl, PlainClient, str, str],
) -> None:
    _ctl, _alice, room_id, recovery_key = enabled
    fresh = await start_e2ee_proxy(store=MemoryStore())
    again = PlainClient(session, fresh.url)
    await again.login("alice")
    ctl = Ctl(fresh, again.user_id)
    app = ctl.app
    await recovery.recover(app[UPSTREAM], ctl.account(), recovery_key, restore=False)
    asked = len(stub.requests_to(r"/room_keys/keys/"))
    assert await history_bodies(again, room_id) == ["one", "two", "three"]
    assert len(stub.requests_to(r"/room_keys/keys/")) > asked  # fetched one session at a time


async def test_a_backup_replaced_elsewhere_is_noticed(
    stub: StubHomeserver, enabled: tuple[Ctl, PlainClient, str, str],
) -> None:
    ctl, alice, _room, _key = enabled
    stub.backups.create(alice.user_id, {"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
                                        "auth_data": {"public_key": "x" * 43}})
    # The next new room key goes to the old version: the server refuses it (wrong version).
    await alice.send_text(await alice.create_encrypted_room(), "a new room, a new key")

    async def set_aside() -> Any:
        return (await ctl("recovery.status"))["backup"]["in_use"] is None

    await until("the old version set aside", set_aside)


async def test_no_secret_reaches_the_server_or_the_log_in_the_clear(
    stub: StubHomeserver, caplog: pytest.LogCaptureFixture,
    enabled: tuple[Ctl, PlainClient, str, str],
) -> None:
    ctl, alice, _room, recovery_key = enabled
    account = ctl.account()
    secrets = [recovery_key, recovery_key.replace(" ", ""),
               *account.machine.trust.state.own.secrets().values()]
    backup_secret = account.machine.backup.secret()
    assert backup_secret is not None
    secrets.append(backup_secret)
    user = stub.accounts.user(alice.user_id)
    on_server = json.dumps({name: data.content if hasattr(data, "content") else repr(data)
                            for name, data in user.account_data.items()}, default=repr)
    on_server += json.dumps([v.__dict__ for v in stub.backups.versions[alice.user_id].values()],
                            default=repr)
    logged = caplog.text
    for secret in secrets:
        assert secret not in on_server
        assert secret not in logged


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


async def test_a_bot_that_logs_in_afresh_recovers_by_itself(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
    enabled: tuple[Ctl, PlainClient, str, str], tmp_path: Path,
) -> None:
    _ctl, _alice, room_id, recovery_key = enabled
    key_file = tmp_path / "bot-recovery-key"
    key_file.write_text(recovery_key + "\n")
    fresh = await start_e2ee_proxy(store=MemoryStore(), recovery_key_file=str(key_file))
    bot = PlainClient(session, fresh.url)
    await bot.login("alice")  # no ctl command: the new login recovers on its own

    async def history() -> Any:
        bodies = await history_bodies(bot, room_id)
        return bodies if bodies == ["one", "two", "three"] else None

    await until("the history readable", history)
    ctl = Ctl(fresh, bot.user_id)

    async def signed() -> Any:
        return (await ctl("cross-signing.status"))["device_signed"]

    await until("the bot's new device signed", signed)
