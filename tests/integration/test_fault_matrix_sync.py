"""The fault matrix, syncing (issue 13, item 1): Bob's /sync that brings Alice's message and its
room key meets each fault, on the sync itself, on the one-time key upload it sets off, and in
the store's commit of what it brought. In every cell Bob's client gets a Matrix error or a
success, the room key is in the store once a sync was answered (nothing acknowledged is lost),
the message reaches Bob once and decrypted, and the next message and key upload work with no
restart. The README's "Fault matrix" table is this file's EXPECTED."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from e2eproxy.types import RoomId, SessionId
from tests.integration.conftest import StartE2EEProxy
from tests.support.fault_matrix import (
    CLIENT_SYNC,
    FAULTS,
    RETRY_AFTER_MS,
    World,
    make_world,
    outcome,
)
from tests.support.plain_client import V3
from tests.support.stub_homeserver import StubHomeserver
from tests.support.timing import until
from tests.support.wire import assert_ciphertext_only, raw_messages

# What Bob's client is answered while the fault lasts.
EXPECTED: dict[tuple[str, str], str] = {
    ("sync", "429"): "429 M_LIMIT_EXCEEDED",
    ("sync", "500"): "500 M_UNKNOWN",
    ("sync", "502"): "502 M_UNKNOWN",
    ("sync", "timeout"): "504 M_UNKNOWN",
    ("sync", "reset"): "502 M_UNKNOWN",
    # The upload goes on in the background: the sync is answered as usual.
    **{("key upload", fault): "200" for fault in FAULTS},
}
OTK_TARGET = 25  # what the engine keeps on the server (half of what an Olm account holds)


async def _before_the_fault(world: World) -> tuple[str, str]:
    """Bob's position, then Alice's message (her first: it claims one of Bob's one-time keys,
    so Bob's next sync sets off an upload). Returns its event id and session id."""
    await world.bob.sync()
    event_id = await world.alice.send_text(world.room_id, "before the fault", txn="m1")
    (event,) = raw_messages(world.stub.raw_events(world.room_id))
    return event_id, str(event["content"]["session_id"])


async def _bob_syncs_once(world: World) -> tuple[int, Any]:
    bob = world.bob
    assert bob.next_batch is not None
    status, body = await bob.request(
        "GET", f"{V3}/sync", params={"since": bob.next_batch, "timeout": "0"}
    )
    if status == 200:
        bob.next_batch = body["next_batch"]
        bob.sync_bodies.append(body)
    return status, body


async def _nothing_lost(world: World, event_id: str, session_id: str) -> None:
    """Bob reads the message once, decrypted, and its key is in the store (not only in the
    engine's memory); then the next message works too, with no restart."""
    bob, room_id = world.bob, world.room_id
    seen = await bob.wait_for_event(room_id, event_id)
    assert seen["type"] == "m.room.message" and seen["content"]["body"] == "before the fault"
    assert [e["event_id"] for e in bob.timeline(room_id)].count(event_id) == 1
    key = world.key_of(bob)
    stored, _ = await world.store.load_inbound_group_sessions(
        key, [(RoomId(room_id), SessionId(session_id))]
    )
    assert len(stored) == 1, "the room key that sync brought is not in the store"
    later = await world.alice.send_text(room_id, "after the fault", txn="m2")
    seen = await bob.wait_for_event(room_id, later)
    assert seen["type"] == "m.room.message" and seen["content"]["body"] == "after the fault"
    assert_ciphertext_only(world.stub.raw_events(room_id))


def _otk_count(world: World) -> int:
    bob = world.bob
    return world.stub.keys.one_time_key_counts(bob.user_id, bob.device_id)["signed_curve25519"]


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_the_sync_itself_fails(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
    fault: str,
) -> None:
    world = await make_world(stub, session, start_e2ee_proxy)
    event_id, session_id = await _before_the_fault(world)
    injected = world.inject(r"/sync$", "GET", fault, query_regex=CLIENT_SYNC)
    status, body = await _bob_syncs_once(world)
    world.clear(injected)
    assert injected.hits >= 1, "the sync never met its fault"
    assert outcome(status, body) == EXPECTED[("sync", fault)], body
    if fault == "429":
        assert body["retry_after_ms"] == RETRY_AFTER_MS  # the client is told when to retry
    await _nothing_lost(world, event_id, session_id)


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_the_key_upload_it_sets_off_fails(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
    fault: str,
) -> None:
    world = await make_world(stub, session, start_e2ee_proxy)
    event_id, session_id = await _before_the_fault(world)
    assert _otk_count(world) == OTK_TARGET - 1  # Alice took one
    injected = world.inject(r"/keys/upload$", "POST", fault)
    status, body = await _bob_syncs_once(world)
    assert outcome(status, body) == EXPECTED[("key upload", fault)], body

    async def upload_tried() -> bool:
        return injected.hits >= 1

    await until("the one-time key upload", upload_tried)
    world.clear(injected)
    await _nothing_lost(world, event_id, session_id)

    async def topped_up() -> bool:
        return _otk_count(world) == OTK_TARGET

    await until("Bob's one-time keys topped up again", topped_up)
    if fault == "429":
        assert RETRY_AFTER_MS / 1000 in world.timer.slept


# Bob's saves from his sync on: what it brought (with his client's position), the decryption
# of the message, then (in the background) the step that generates the one-time key to upload.
SYNC_SAVES = {1: "500 M_UNKNOWN", 2: "500 M_UNKNOWN", 3: "200"}


@pytest.mark.parametrize("nth", list(SYNC_SAVES))
async def test_the_store_fails_a_commit(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
    nth: int,
) -> None:
    """A commit failing loses nothing: the client is not given a position past what the store
    holds, so its next sync from the same position brings it all again, and the engine (rebuilt
    from the store) takes the room key again instead of skipping it as already seen."""
    world = await make_world(stub, session, start_e2ee_proxy)
    event_id, session_id = await _before_the_fault(world)
    world.store.fail_save(world.key_of(world.bob), nth)
    status, body = await _bob_syncs_once(world)
    assert outcome(status, body) == SYNC_SAVES[nth], body

    async def failed() -> bool:
        return world.store.failed == 1

    await until("the store to fail a commit", failed)
    await _nothing_lost(world, event_id, session_id)

    async def topped_up() -> bool:
        return _otk_count(world) == OTK_TARGET

    await until("Bob's one-time keys topped up again", topped_up)
