"""Changes -> store -> snapshot -> restored engine continues where the old one stopped."""

from __future__ import annotations

from e2eproxy.crypto.results import Decrypted, DecryptionFailure, FailureReason
from e2eproxy.protocol.api import RequestKind
from tests.support.machine_pair import Client, FakeServer, make_clients

ROOM = "!room:test"


def _setup() -> tuple[FakeServer, Client, Client]:
    server, (alice, bob) = make_clients("alice", "bob")
    server.create_room(ROOM, alice.user_id, [bob.user_id])
    alice.tick()
    bob.tick()
    return server, alice, bob


def test_restore_continues_sessions() -> None:
    server, alice, bob = _setup()
    first = alice.send(ROOM, "before restart")
    bob.tick()
    assert bob.read(ROOM, first) == "before restart"
    claims = len([r for _, r in server.requests if r.kind is RequestKind.KEYS_CLAIM])
    alice.restart()
    bob.restart()
    assert alice.machine.is_room_encrypted(ROOM)
    assert alice.machine.outgoing_requests() == []  # keys already published, devices known
    second = alice.send(ROOM, "after restart")
    assert second["content"]["session_id"] == first["content"]["session_id"]
    assert bob.read(ROOM, second) == "after restart"
    assert bob.read(ROOM, first) == "before restart"  # same event again: fine
    replay = dict(first, event_id="$other")
    failure = bob.decrypt(ROOM, replay)
    assert isinstance(failure, DecryptionFailure)
    assert failure.reason is FailureReason.REPLAYED  # replay table survived
    # the Olm channel survived too: a new room key needs no new claim
    alice.machine.discard_room_key(ROOM)
    third = alice.send(ROOM, "new session")
    bob.tick()
    assert bob.read(ROOM, third) == "new session"
    assert len([r for _, r in server.requests if r.kind is RequestKind.KEYS_CLAIM]) == claims


def test_pending_to_device_requests_survive_a_crash() -> None:
    server, alice, bob = _setup()
    members = [alice.user_id, bob.user_id]
    requests = []
    for _ in range(5):
        requests = alice.machine.share_room_key(ROOM, members)
        alice.persist()
        if all(r.kind is RequestKind.TO_DEVICE for r in requests):
            break
        for request in requests:
            alice.answer(request)
    assert requests
    alice.restart()  # crashed before sending the room keys
    again = alice.machine.outgoing_requests()
    assert [r.id for r in again] == [r.id for r in requests]
    for request in again:
        alice.answer(request)
    event = server.post_event(ROOM, alice.user_id,
                              alice.machine.encrypt(ROOM, "m.room.message", {"body": "x"}))
    bob.tick()
    assert bob.read(ROOM, event) == "x"


def test_inbound_sessions_loaded_on_demand_with_lru_cache() -> None:
    _server, alice, bob = _setup()
    events = []
    for i in range(3):
        alice.machine.discard_room_key(ROOM)
        events.append(alice.send(ROOM, f"s{i}"))
    bob.tick()
    bob.restart(with_inbound=False, cache_size=2)
    failure = bob.decrypt(ROOM, events[0])
    assert isinstance(failure, DecryptionFailure)
    assert failure.reason is FailureReason.MISSING_SESSION
    for i, event in enumerate(events):
        needed = bob.machine.sessions_needed(ROOM, [event])
        assert needed == [(ROOM, event["content"]["session_id"])]
        records, replay = bob.store.inbound(needed)
        bob.machine.load_inbound_group_sessions(records, replay)
        assert bob.machine.sessions_needed(ROOM, [event]) == []
        assert bob.read(ROOM, event) == f"s{i}"
    # capacity 2: the first session was evicted and must be loaded again
    assert bob.machine.sessions_needed(ROOM, events) == [(ROOM, events[0]["content"]["session_id"])]


def test_provisional_key_does_not_replace_better_stored_copy() -> None:
    _server, alice, bob = _setup()
    event = alice.send(ROOM, "index zero")
    bob.tick()
    bob.restart(with_inbound=False)
    # a worse copy (later index) of the same session arrives while the stored one is not loaded
    session_id = event["content"]["session_id"]
    stored, _ = bob.store.inbound([(ROOM, session_id)])
    from dataclasses import replace

    import vodozemac

    later = stored[0].session.export_at(1)
    worse = replace(stored[0], session=vodozemac.InboundGroupSession.import_session(later),
                    first_known_index=1)
    bob.machine._inbound.add(worse)  # as if received over Olm
    assert bob.machine.sessions_needed(ROOM, [event]) == [(ROOM, session_id)]
    bob.machine.load_inbound_group_sessions(stored)
    assert isinstance(bob.decrypt(ROOM, event), Decrypted)


def test_discard_and_new_session_in_one_batch_survives_restart() -> None:
    server, alice, bob = _setup()
    alice.send(ROOM, "first")
    alice.machine.discard_room_key(ROOM)
    requests = alice.machine.share_room_key(ROOM, [alice.user_id, bob.user_id])
    batch = alice.machine.take_changes()  # removal and the new session in one batch
    alice.store.save(batch)
    assert ROOM not in batch.outbound_group_sessions_removed
    alice.restart()  # crash before the room keys were sent
    for request in alice.machine.outgoing_requests():
        alice.answer(request)
    assert {r.id for r in requests} <= {r.id for _, r in server.requests}
    event = server.post_event(ROOM, alice.user_id,
                              alice.machine.encrypt(ROOM, "m.room.message", {"body": "new"}))
    bob.tick()
    assert bob.read(ROOM, event) == "new"
