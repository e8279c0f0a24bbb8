"""Two proxy instances on one store (as with PostgreSQL): each device is driven by the one
holding its lease. A request for a device the other instance drives gets it handed over (the
other stops and releases within a renewal round), the device keeps working with no key lost,
and a lost lease stops the account's work at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from e2eproxy.proxy.app_keys import REGISTRY
from e2eproxy.proxy.lease_keeper import renew_round
from e2eproxy.proxy.registry import AccountRegistry
from e2eproxy.store.memory import MemoryBackend
from e2eproxy.store.records import RecordStore
from e2eproxy.store.txn import LeaseRow, Txn
from tests.integration.conftest import RunningProxy, StartE2EEProxy
from tests.support.plain_client import (
    PlainClient,
    encrypted_room_of,
    login_all,
    stub_media,
    upload_media,
)
from tests.support.stub_homeserver import StubHomeserver
from tests.support.timing import ScaledTimer, until


def registry_of(proxy: RunningProxy) -> AccountRegistry:
    app = proxy.server.app
    assert app is not None
    return app[REGISTRY]


async def test_a_device_moves_to_the_instance_its_requests_reach(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
) -> None:
    shared = MemoryBackend()  # one store, two processes' views of it (two lease holders)
    first = await start_e2ee_proxy(store=RecordStore(shared, holder="instance-1"))
    second = await start_e2ee_proxy(store=RecordStore(shared, holder="instance-2"))
    alice, bob = await login_all(session, first.url, stub, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    await alice.send_text(room_id, "through the first instance")

    # Alice's client now reaches the second instance (a load balancer moved her token).
    moved = PlainClient(session, second.url, alice.access_token)
    moved.user_id, moved.device_id = alice.user_id, alice.device_id

    sending = asyncio.ensure_future(moved.send_text(room_id, "through the second instance"))
    await until("the second instance asked for the account",
                lambda: _wanted(registry_of(first), alice.user_id))
    # The first instance's renewal round sees the account wanted and hands it over.
    await renew_round(registry_of(first))
    await sending
    assert alice.user_id not in {a.user_id for a in registry_of(first).accounts.values()}
    assert alice.user_id in {a.user_id for a in registry_of(second).accounts.values()}
    # Bob reads both, and Alice's history reads back through her new instance: no key lost.
    history = [e["content"].get("body") for e in reversed(await bob.messages(room_id))
               if e["type"] == "m.room.message"]
    assert history == ["through the first instance", "through the second instance"]
    mine = [e["content"].get("body") for e in reversed(await moved.messages(room_id))
            if e["type"] == "m.room.message"]
    assert mine == history


async def _wanted(registry: AccountRegistry, user_id: str) -> bool:
    [account] = [a for a in registry.accounts.values() if a.user_id == user_id]
    lease = (await registry.store.renew_leases([account.key]))[account.key]
    return bool(lease and lease.wanted)


async def test_a_lost_lease_stops_the_accounts_work(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
) -> None:
    shared = MemoryBackend()
    first = await start_e2ee_proxy(store=RecordStore(shared, holder="instance-1"))
    await login_all(session, first.url, stub, "alice")
    registry = registry_of(first)
    [account] = list(registry.accounts.values())
    # Another process takes the account over behind the first one's back (its lease expired
    # while it was paused, say): the row now names the other holder.
    def steal(txn: Txn) -> None:
        row = txn.lease_get(account.key)
        assert row is not None
        txn.lease_put(account.key, LeaseRow("intruder", row.expires_ms, row.generation + 1))

    await shared.run(steal)
    await renew_round(registry)
    assert registry.accounts == {}
    assert all(task.done() for task in account.tasks) or account.tasks == []


async def test_a_starting_instance_leaves_driven_accounts_alone_and_adopts_orphans(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
) -> None:
    shared = MemoryBackend()
    first = await start_e2ee_proxy(store=RecordStore(shared, holder="instance-1"))
    alice, bob = await login_all(session, first.url, stub, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    await alice.send_text(room_id, "while the first instance drives both")

    # A second instance starts on the same store: it neither waits for the accounts the
    # first one drives nor asks for them (it would take every account from its peer).
    second = await start_e2ee_proxy(store=RecordStore(shared, holder="instance-2"))
    assert registry_of(second).accounts == {}
    assert await registry_of(second).adopt_unheld() == 0
    held = await registry_of(first).store.renew_leases(list(registry_of(first).accounts))
    assert [lease is not None and not lease.wanted for lease in held.values()] == [True, True]

    # The first instance stops: the second takes its accounts over unasked, workers and all,
    # before any request for them reaches it.
    await first.stop()
    assert await registry_of(second).adopt_unheld() == 2
    adopted = registry_of(second).accounts.values()
    assert sorted(a.user_id for a in adopted) == sorted([alice.user_id, bob.user_id])
    assert all(a.tasks for a in adopted), "their background work runs here now"
    # And they go on where they were: a new message and the old one both read back.
    moved = [PlainClient(session, second.url, c.access_token) for c in (alice, bob)]
    for client, old in zip(moved, (alice, bob), strict=True):
        client.user_id, client.device_id = old.user_id, old.device_id
    await moved[1].send_text(room_id, "after the first instance stopped")
    bodies = [e["content"].get("body") for e in reversed(await moved[0].messages(room_id))
              if e["type"] == "m.room.message"]
    assert bodies == ["while the first instance drives both", "after the first instance stopped"]


async def test_a_held_upload_is_sent_only_by_the_instance_that_holds_it(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
    tmp_path: Path,
) -> None:
    """The store (shared) names the upload; its bytes wait in the receiving instance's own
    data dir. A message naming it through another instance fails clearly, sending nothing."""
    shared = MemoryBackend()
    first = await start_e2ee_proxy(store=RecordStore(shared, holder="instance-1"),
                                   data_dir=tmp_path / "first")
    second = await start_e2ee_proxy(store=RecordStore(shared, holder="instance-2"),
                                    data_dir=tmp_path / "second")
    alice, bob = await login_all(session, first.url, stub, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    mxc = await upload_media(alice, b"held by the first instance", "image/png", filename="a.png")

    moved = PlainClient(session, second.url, alice.access_token)
    sends_before = len(stub.requests_to(r"/rooms/[^/]*/send"))
    content = {"msgtype": "m.image", "body": "a.png", "url": mxc}
    sending = asyncio.ensure_future(
        moved.request("PUT", moved.send_path(room_id, "m.room.message", "t1"), content))
    await until("the second instance asked for the account",
                lambda: _wanted(registry_of(first), alice.user_id))
    await renew_round(registry_of(first))  # handed over
    status, body = await sending
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body
    assert "another e2eproxy instance" in body["error"]
    assert len(stub.requests_to(r"/rooms/[^/]*/send")) == sends_before  # no event
    assert stub_media(stub, mxc).content is None  # reserved, never filled


async def test_waiting_for_one_account_holds_up_no_other(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
) -> None:
    """While a request waits for its account to be handed over (up to a renewal round, or a
    dead holder's whole lease), other tokens and logins on the instance go on."""
    shared = MemoryBackend()
    first = await start_e2ee_proxy(store=RecordStore(shared, holder="instance-1"))
    second = await start_e2ee_proxy(store=RecordStore(shared, holder="instance-2"))
    (alice,) = await login_all(session, first.url, stub, "alice")
    keeper = registry_of(first)._lease_task
    assert keeper is not None
    keeper.cancel()  # the first instance stalls: it renews nothing and hands nothing over

    moved = PlainClient(session, second.url, alice.access_token)
    waiting = asyncio.ensure_future(moved.sync())
    await until("the second instance asked for alice",
                lambda: _wanted(registry_of(first), alice.user_id))
    (carol,) = await login_all(session, second.url, stub, "carol")  # not behind alice's wait
    assert "next_batch" in await carol.sync()
    assert not waiting.done()
    await renew_round(registry_of(first))  # the first instance hands alice over after all
    assert "next_batch" in await waiting
    assert alice.user_id in {a.user_id for a in registry_of(second).accounts.values()}


async def test_an_instance_takes_over_by_itself_the_accounts_of_one_that_stopped(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
) -> None:
    shared = MemoryBackend()
    first = await start_e2ee_proxy(store=RecordStore(shared, holder="instance-1"))
    # The second's renewal rounds (and every other wait of its) run 100 times faster.
    second = await start_e2ee_proxy(store=RecordStore(shared, holder="instance-2"),
                                    timer=ScaledTimer(0.01))
    (alice,) = await login_all(session, first.url, stub, "alice")
    await first.stop()

    async def adopted() -> bool:
        return alice.user_id in {a.user_id for a in registry_of(second).accounts.values()}

    await until("the second instance took alice over, with no request for her", adopted)
