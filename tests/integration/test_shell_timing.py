"""The shell's timing decisions take their time from the injected timer: a 429's retry_after_ms,
the token cache's lifetime and the member list's, moved by the test instead of waited for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from e2eproxy.crypto.machine import OlmMachine
from e2eproxy.crypto.settings import SharingStrategy
from e2eproxy.proxy.account import MEMBERS_TTL_S, Account
from e2eproxy.proxy.outgoing import call
from e2eproxy.proxy.registry import TOKEN_TTL_S, AccountRegistry
from e2eproxy.proxy.upstream import Upstream
from e2eproxy.store import AccountKey, MemoryStore
from e2eproxy.types import DeviceId, UserId
from tests.support.stub_homeserver import StubHomeserver
from tests.support.timing import ManualTimer


@pytest.fixture
async def upstream(stub: StubHomeserver) -> AsyncIterator[Upstream]:
    assert stub.base_url is not None
    upstream = Upstream(stub.base_url, read_timeout=30.0)
    await upstream.start()
    yield upstream
    await upstream.close()


async def _account(stub: StubHomeserver, timer: ManualTimer) -> Account:
    stub.register("tim", "pw")
    session = stub.login("tim", "pw", device_id="TIMDEV")
    key = AccountKey(UserId(session.user_id), DeviceId("TIMDEV"))
    store = MemoryStore()
    await store.open()
    machine = OlmMachine(key.user_id, key.device_id, timer)
    return Account(key=key, machine=machine, store=store, access_token=session.access_token,
                   timer=timer)


async def test_a_429_waits_as_long_as_the_server_asked_in_test_time(
    stub: StubHomeserver, upstream: Upstream
) -> None:
    timer = ManualTimer()
    account = await _account(stub, timer)
    stub.faults.add(r"/account/whoami", status=429, retry_after_ms=1234, times=1)
    pending = asyncio.create_task(
        call(upstream, account, "GET", "/_matrix/client/v3/account/whoami")
    )
    await timer.sleeping(1)
    assert timer.slept == [1.234]
    assert not pending.done()
    timer.advance(1.234)
    status, body = await pending
    assert status == 200 and body["user_id"] == account.user_id


async def test_a_token_answer_is_cached_for_its_lifetime(
    stub: StubHomeserver, upstream: Upstream
) -> None:
    timer = ManualTimer()
    stub.register("tom", "pw")
    session = stub.login("tom", "pw", device_id="TOMDEV")
    strategy = SharingStrategy.ALL_EXCEPT_BLACKLISTED
    registry = AccountRegistry(upstream, MemoryStore(), timer, strategy)
    await registry.store.open()
    try:
        asked = lambda: len(stub.requests_to(r"/account/whoami$"))  # noqa: E731
        await registry.resolve(session.access_token)
        before = asked()
        timer.advance(TOKEN_TTL_S - 1)
        await registry.resolve(session.access_token)
        assert asked() == before  # still cached
        timer.advance(2)
        await registry.resolve(session.access_token)
        assert asked() == before + 1  # expired: asked again
    finally:
        await registry.close()
        await registry.store.close()


async def test_a_member_list_is_trusted_for_its_lifetime(
    stub: StubHomeserver, upstream: Upstream
) -> None:
    timer = ManualTimer()
    account = await _account(stub, timer)
    account.set_members("!r:x", ["@a:x"])
    timer.advance(MEMBERS_TTL_S - 1)
    assert account.cached_members("!r:x") == ["@a:x"]
    timer.advance(2)
    assert account.cached_members("!r:x") is None
