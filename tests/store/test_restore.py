"""An engine saved to SQLite, the store closed and reopened, the engine rebuilt: it goes on."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from e2eproxy.crypto.changes import Changes, EngineSnapshot
from e2eproxy.crypto.clock import ManualClock
from e2eproxy.crypto.machine import OlmMachine
from e2eproxy.crypto.results import Decrypted
from e2eproxy.protocol.api import RequestKind
from e2eproxy.store.base import AccountKey
from e2eproxy.store.sqlite import SqliteStore
from e2eproxy.types import DeviceId, UserId
from tests.support.machine_pair import Client, FakeServer

T = TypeVar("T")
ROOM = "!room:test"


class Bridge:
    """Stands in for a client's store: the sync engine thread calls the async store."""

    def __init__(self, loop: asyncio.AbstractEventLoop, store: SqliteStore, client: Client):
        self.loop, self.store = loop, store
        self.account = AccountKey(UserId(client.user_id), DeviceId(client.device_id))
        self.saved = 0

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def save(self, changes: Changes) -> None:
        self.call(self.store.save(self.account, changes))
        self.saved += 1

    def snapshot(self, **_: object) -> EngineSnapshot:
        snapshot = self.call(self.store.load_snapshot(self.account))
        assert snapshot is not None
        return snapshot


def _scenario(loop: asyncio.AbstractEventLoop, data_dir: Path) -> None:
    store = SqliteStore(data_dir, use_keyring=False)
    asyncio.run_coroutine_threadsafe(store.open(), loop).result()
    server = FakeServer(ManualClock())
    alice = Client(server, "@alice:test", "ALICEDEV")
    bob = Client(server, "@bob:test", "BOBDEV")
    bridges = {c.user_id: Bridge(loop, store, c) for c in (alice, bob)}
    for client in (alice, bob):
        client.store = bridges[client.user_id]  # type: ignore[assignment]
        client.flush()
    for client in (alice, bob):
        client.tick()
    server.create_room(ROOM, alice.user_id, [bob.user_id])
    alice.tick()
    bob.tick()
    from_bob = bob.send(ROOM, "hello from bob")
    alice.tick()
    assert alice.read(ROOM, from_bob) == "hello from bob"
    first = alice.send(ROOM, "before restart")
    bob.tick()
    assert bob.read(ROOM, first) == "before restart"
    claims = [r for _, r in server.requests if r.kind is RequestKind.KEYS_CLAIM]

    # Restart: close the store, reopen it, rebuild Alice's engine from it alone.
    alice.persist()
    bridge = bridges[alice.user_id]
    bridge.call(store.close())
    store = SqliteStore(data_dir, use_keyring=False)
    bridge.call(store.open())
    bridge.store = bridges[bob.user_id].store = store
    snapshot = bridge.snapshot()
    assert snapshot.inbound_group_sessions == []
    alice.machine = OlmMachine.restore(alice.user_id, alice.device_id, server.clock, snapshot)
    assert alice.machine.outgoing_requests() == [], "keys uploaded, devices known"

    # Old events decrypt once their session is loaded on demand.
    needed = alice.machine.sessions_needed(ROOM, [from_bob])
    assert needed, "the engine asks for the session"
    records, replays = bridge.call(store.load_inbound_group_sessions(bridge.account, needed))
    alice.machine.load_inbound_group_sessions(records, replays)
    result = alice.machine.decrypt_room_event(ROOM, from_bob)
    assert isinstance(result, Decrypted), result
    assert result.event["content"]["body"] == "hello from bob"

    # The outbound session is kept: no rotation because of the restart.
    second = alice.send(ROOM, "after restart")
    assert second["content"]["session_id"] == first["content"]["session_id"]
    bob.tick()
    assert bob.read(ROOM, second) == "after restart"

    # The Olm session with Bob goes on: a new room key needs no new claim.
    alice.machine.discard_room_key(ROOM)
    third = alice.send(ROOM, "new room key")
    bob.tick()
    assert bob.read(ROOM, third) == "new room key"
    assert [r for _, r in server.requests if r.kind is RequestKind.KEYS_CLAIM] == claims
    bridge.call(store.close())


async def test_engine_restored_from_sqlite_goes_on(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(_scenario, loop, tmp_path)
