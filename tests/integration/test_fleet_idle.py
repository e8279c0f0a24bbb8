"""A fleet of idle accounts behind one proxy (issue 18): an empty sync round writes nothing and
wakes nothing, timers are spread, the uploader sleeps without a backup, and a start restores and
catches up a few accounts at a time (at the store, and at the homeserver)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from e2eproxy.crypto.machine import OlmMachine
from e2eproxy.crypto.settings import SharingStrategy
from e2eproxy.proxy import backup_io, worker
from e2eproxy.proxy.account import HOMESERVER_SECRET, Account
from e2eproxy.proxy.background_filter import CRYPTO_FILTER
from e2eproxy.proxy.intake import BACKGROUND_STREAM, TOKEN_SAVE_EVERY_S, carries_news, process_sync
from e2eproxy.proxy.registry import RESTORE_CONCURRENCY, TOKEN_SECRET, AccountRegistry
from e2eproxy.proxy.upstream import CATCH_UP_SYNCS, Upstream
from e2eproxy.store import AccountKey, MemoryStore
from e2eproxy.timing import spread
from e2eproxy.types import DeviceId, UserId
from tests.integration.conftest import StartE2EEProxy
from tests.support.background import is_background
from tests.support.plain_client import PlainClient, login_all
from tests.support.store_faults import FailingSaves
from tests.support.stub_homeserver import RecordedRequest, StubHomeserver
from tests.support.timing import ManualTimer, until

HOMESERVER = "https://example.org"
COUNTS = {"signed_curve25519": 50}


async def _account(store: MemoryStore, timer: ManualTimer, n: int = 0) -> Account:
    key = AccountKey(UserId(f"@bot{n}:example.org"), DeviceId(f"BOT{n}"))
    await store.acquire_lease(key)
    machine = OlmMachine(key.user_id, key.device_id, timer)
    account = Account(key=key, machine=machine, store=store, access_token=f"t{n}",
                      homeserver=HOMESERVER, timer=timer)
    async with account.step():  # the identity, as a login saves it
        pass
    return account


def _body(token: str, **parts: Any) -> dict[str, Any]:
    return {"next_batch": token, "device_one_time_keys_count": COUNTS,
            "device_unused_fallback_key_types": ["signed_curve25519"], **parts}


async def test_an_empty_round_writes_nothing_and_wakes_nothing() -> None:
    store, timer = FailingSaves(), ManualTimer()
    await store.open()
    account = await _account(store, timer)
    await process_sync(account, _body("s1"), BACKGROUND_STREAM, initial=True)
    assert await store.get_sync_token(account.key, BACKGROUND_STREAM) == "s1"
    saves = store.saves[account.key]
    account.wake_outgoing.clear()

    # An idle long-poll that timed out: the same counts, empty sections.
    empty = _body("s2", to_device={"events": []}, device_lists={"changed": [], "left": []},
                  rooms={"join": {}, "invite": {}, "leave": {}}, account_data={"events": []})
    await process_sync(account, empty, BACKGROUND_STREAM)
    assert store.saves[account.key] == saves
    assert not account.wake_outgoing.is_set()
    assert await store.get_sync_token(account.key, BACKGROUND_STREAM) == "s1"

    # Something in it: saved with its token before the next poll, and the outgoing loop woken.
    await process_sync(account, _body("s3", device_lists={"changed": ["@peer:example.org"]}),
                       BACKGROUND_STREAM)
    assert store.saves[account.key] == saves + 1
    assert account.wake_outgoing.is_set()
    assert await store.get_sync_token(account.key, BACKGROUND_STREAM) == "s3"

    # A one-time key claimed (the count moved): saved, woken to upload another.
    account.wake_outgoing.clear()
    await process_sync(account, {**_body("s4"), "device_one_time_keys_count": {
        "signed_curve25519": 49}}, BACKGROUND_STREAM)
    assert store.saves[account.key] == saves + 2
    assert account.wake_outgoing.is_set()

    # Idle for long: the token is still saved now and then, so a restart never goes far back.
    moved = {"device_one_time_keys_count": {"signed_curve25519": 49}}
    await process_sync(account, {**_body("s5"), **moved}, BACKGROUND_STREAM)
    assert store.saves[account.key] == saves + 2
    timer.advance(TOKEN_SAVE_EVERY_S)
    await process_sync(account, {**_body("s6"), **moved}, BACKGROUND_STREAM)
    assert store.saves[account.key] == saves + 3
    assert await store.get_sync_token(account.key, BACKGROUND_STREAM) == "s6"


def test_what_counts_as_news_in_a_sync_body() -> None:
    assert not carries_news(_body("s", rooms={"join": {}}, presence={"events": []}))
    assert carries_news(_body("s", to_device={"events": [{"type": "m.room_key"}]}))
    assert carries_news(_body("s", device_lists={"left": ["@a:b"]}))
    assert carries_news(_body("s", rooms={"leave": {"!r:b": {}}}))  # any room at all
    assert carries_news(_body("s", some_new_field="x"))  # unknown: taken as news


def test_timers_are_spread_within_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, first, later in ((0.0, 30_000, 30_000), (0.999999, 15_000, 27_000)):
        monkeypatch.setattr(random, "random", lambda v=value: v)
        assert worker.poll_timeout_ms(True) == pytest.approx(first, abs=1)
        assert worker.poll_timeout_ms(False) == pytest.approx(later, abs=1)
        assert spread(60.0, 0.25) == pytest.approx(60.0 - 15.0 * value)
    monkeypatch.undo()
    samples = {worker.poll_timeout_ms(False) for _ in range(50)}
    assert len(samples) > 1 and all(27_000 <= s <= 30_000 for s in samples)


async def test_the_backup_uploader_sleeps_while_no_backup_is_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a backup it waits to be woken, not on a timer (IDLE_CHECK_S at 0 would make a
    timed loop spin)."""
    store, timer = MemoryStore(), ManualTimer()
    await store.open()
    account = await _account(store, timer)
    checks = 0

    async def upload_batch(upstream: Any, account: Account) -> bool:
        nonlocal checks
        checks += 1
        return False

    monkeypatch.setattr(backup_io, "IDLE_CHECK_S", 0.0)
    monkeypatch.setattr(backup_io, "upload_batch", upload_batch)
    loop = asyncio.create_task(backup_io.upload_loop(Upstream(HOMESERVER, 5.0), account))
    try:
        for _ in range(50):
            await asyncio.sleep(0)
        assert checks == 0
        account.wake_backup()  # recovery set one up
        for _ in range(50):
            await asyncio.sleep(0)
        assert checks == 1
    finally:
        loop.cancel()


class HeldUpstream(Upstream):
    """Answers the background's /sync only when the test releases it; everything else at once.
    `in_flight` counts the syncs waiting now."""

    def __init__(self) -> None:
        super().__init__(HOMESERVER, 5.0)
        self.in_flight = 0
        self.syncs = 0
        self.release = asyncio.Event()

    async def request_json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        if "/sync" not in path:
            return 200, {"one_time_key_counts": COUNTS, "filter_id": "f1"}
        self.syncs += 1
        self.in_flight += 1
        try:
            await self.release.wait()
        finally:
            self.in_flight -= 1
        return 200, _body(f"s{self.syncs}")


async def _settle(rounds: int = 200) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


@pytest.fixture
async def held() -> AsyncIterator[HeldUpstream]:
    upstream = HeldUpstream()
    yield upstream
    upstream.release.set()


async def test_first_syncs_of_many_accounts_go_a_few_at_a_time(held: HeldUpstream) -> None:
    store, timer = MemoryStore(), ManualTimer()
    await store.open()
    accounts = [await _account(store, timer, n) for n in range(3 * CATCH_UP_SYNCS)]
    for account in accounts:
        worker.start_worker(held, account)
    try:
        await _settle()
        timer.advance(worker.CLIENT_GRACE_S)  # the moment each gives a client that logged in
        await _settle()
        assert held.in_flight == CATCH_UP_SYNCS
        held.release.set()
        await _settle(2000)
        # Every account caught up, and is long-polling now (a long-poll takes no slot).
        assert held.syncs >= 2 * len(accounts)
    finally:
        for account in accounts:
            await worker.stop_worker(account)


class SlowSnapshots(MemoryStore):
    """Snapshots load only when the test lets them; counts the loads waiting at once."""

    def __init__(self) -> None:
        super().__init__()
        self.loading = 0
        self.most = 0
        self.go = asyncio.Event()

    async def load_snapshot(self, account: AccountKey) -> Any:
        self.loading += 1
        self.most = max(self.most, self.loading)
        try:
            await self.go.wait()
        finally:
            self.loading -= 1
        return await super().load_snapshot(account)


async def test_a_start_restores_a_few_accounts_at_a_time(held: HeldUpstream) -> None:
    store, timer = SlowSnapshots(), ManualTimer()
    await store.open()
    stored = 3 * RESTORE_CONCURRENCY
    for n in range(stored):
        account = await _account(store, timer, n)
        await store.put_secret(account.key, TOKEN_SECRET, f"t{n}")
        await store.put_secret(account.key, HOMESERVER_SECRET, HOMESERVER)
        await store.release_lease(account.key)
    registry = AccountRegistry(held, store, timer, SharingStrategy.ALL_EXCEPT_BLACKLISTED)
    start = asyncio.create_task(registry.load_stored())
    try:
        await _settle()
        assert store.loading == RESTORE_CONCURRENCY
        store.go.set()
        await start
        assert store.most == RESTORE_CONCURRENCY
        assert len(registry.accounts) == stored
    finally:
        held.release.set()
        await registry.close()


async def test_the_background_filter_is_uploaded_once_and_named_by_its_id(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
) -> None:
    """The homeserver gets the filter once per user (a restart reuses its id from the store),
    not inline with every round."""
    proxy = await start_e2ee_proxy()
    (bot,) = await login_all(session, proxy.url, stub, "bot")

    def ours() -> list[RecordedRequest]:
        return [r for r in stub.requests_to(r"/sync$", "GET") if is_background(r)]

    def uploads() -> list[RecordedRequest]:
        return [r for r in stub.requests_to(r"/filter$", "POST") if is_background(r)]

    async def long_polling() -> bool:
        return any("timeout" in r.query for r in ours())

    await until("a background long-poll", long_polling)
    assert len(uploads()) == 1
    named = {r.query["filter"] for r in ours() if "timeout" in r.query}
    assert len(named) == 1
    assert stub.accounts.get_filter(bot.user_id, next(iter(named))) == CRYPTO_FILTER

    await proxy.stop()
    seen = len(ours())
    await start_e2ee_proxy(store=proxy.store)  # restores the bot from the store

    async def resumed() -> bool:
        return len(ours()) > seen

    await until("the restarted proxy's background sync", resumed)
    assert {r.query["filter"] for r in ours()[seen:]} == named
    assert len(uploads()) == 1


async def test_a_login_that_made_a_new_device_does_not_ask_for_its_keys(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
) -> None:
    """A device the server made for this login has no keys anywhere: one request less per
    login. A login that names its device may be reusing one with keys (then refused)."""
    proxy = await start_e2ee_proxy()
    stub.register("fresh", "pw")
    stub.register("named", "pw")

    def device_checks(client: PlainClient) -> int:
        return sum(
            (r.json or {}).get("device_keys", {}).get(client.user_id) == [client.device_id]
            for r in stub.requests_to(r"/keys/query$", "POST"))

    fresh = PlainClient(session, proxy.url)
    await fresh.login("fresh")
    named = PlainClient(session, proxy.url)
    await named.login("named", device_id="NAMEDDEV")
    assert device_checks(fresh) == 0
    assert device_checks(named) == 1
    for client in (fresh, named):  # both devices got their keys on the server
        assert client.device_id in (await client.keys_query(client.user_id))["device_keys"][
            client.user_id]
