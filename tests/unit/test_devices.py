"""Device tracking: sequence-numbered dirty flags, signatures, key changes, backoff, left."""

from __future__ import annotations

import copy
from typing import Any

from e2eproxy.crypto.backoff import FailuresCache
from e2eproxy.crypto.changes import ChangeLog
from e2eproxy.crypto.devices import DeviceTracker
from e2eproxy.protocol.api import RequestKind
from e2eproxy.types import DeviceId, UserId
from tests.support.machine_pair import Client, make_clients

ROOM = "!room:test"
BOB = UserId("@bob:test")


def _queries(client: Client) -> list[Any]:
    return [r for r in client.machine.outgoing_requests() if r.kind is RequestKind.KEYS_QUERY]


def test_change_during_query_keeps_user_dirty() -> None:
    server, (alice, bob) = make_clients("alice", "bob")
    server.create_room(ROOM, alice.user_id, [bob.user_id])
    alice.tick()  # bob is tracked now and queried once
    alice.machine.receive_sync({"device_lists": {"changed": [bob.user_id]}})
    (query,) = _queries(alice)
    assert bob.user_id in query.body["device_keys"]
    # the query is in flight; another change arrives before its answer
    alice.machine.receive_sync({"device_lists": {"changed": [bob.user_id]}})
    assert _queries(alice) == []  # not queried twice while in flight
    alice.answer(query)
    (again,) = _queries(alice)  # the stale answer did not clear the newer change
    alice.answer(again)
    assert _queries(alice) == []


def test_same_next_batch_from_another_stream_still_marks_changes() -> None:
    """The proxy's own sync and the client's reach one token from different `since` tokens: an
    initial sync lists no device list changes, the client's incremental one does."""
    server, (alice, bob) = make_clients("alice", "bob")
    server.create_room(ROOM, alice.user_id, [bob.user_id])
    alice.tick()
    assert _queries(alice) == []
    alice.machine.receive_sync({"next_batch": "s25"})  # e.g. the worker's initial sync
    alice.machine.receive_sync({"next_batch": "s25", "device_lists": {"changed": [bob.user_id]}})
    (query,) = _queries(alice)
    assert bob.user_id in query.body["device_keys"]


def _tracker() -> DeviceTracker:
    tracker = DeviceTracker(UserId("@me:test"), DeviceId("ME"), "", ChangeLog())
    tracker.track([BOB])
    return tracker


def _bob_keys() -> tuple[Client, dict[str, Any]]:
    server, (bob,) = make_clients("bob")
    return bob, copy.deepcopy(server.device_keys[bob.user_id])


def _answer(tracker: DeviceTracker, devices: dict[str, Any], now: int = 0) -> Any:
    tracker.query_sent("q", [BOB])
    return tracker.receive_query("q", {"device_keys": {BOB: devices}}, now)


def test_self_signature_checked_and_signing_key_change_rejected() -> None:
    _bob, devices = _bob_keys()
    tracker = _tracker()
    forged = copy.deepcopy(devices)
    forged["BOBDEV"]["keys"]["curve25519:BOBDEV"] = "A" * 43
    update = _answer(tracker, forged)
    assert update.rejected == [(BOB, "BOBDEV", "bad_signature")]
    assert tracker.get(BOB, "BOBDEV") is None
    update = _answer(tracker, devices)
    assert [d.device_id for d in update.new] == ["BOBDEV"]
    _other, other_devices = _bob_keys()  # same device id, new Ed25519 key, validly signed
    update = _answer(tracker, other_devices)
    assert update.rejected == [(BOB, "BOBDEV", "signing_key_changed")]
    stored = tracker.get(BOB, "BOBDEV")
    assert stored is not None and stored.keys == devices["BOBDEV"]
    assert not stored.deleted


def test_mismatched_ids_rejected() -> None:
    _bob, devices = _bob_keys()
    tracker = _tracker()
    update = _answer(tracker, {"OTHER": devices["BOBDEV"], "X": "junk", "Y": {"keys": 3}})
    assert {r[2] for r in update.rejected} == {"id_mismatch", "malformed"}


def test_missing_device_is_marked_deleted() -> None:
    _bob, devices = _bob_keys()
    tracker = _tracker()
    _answer(tracker, devices)
    update = _answer(tracker, {})
    assert [d.device_id for d in update.removed] == ["BOBDEV"]
    assert tracker.active_devices(BOB) == []


def test_older_answer_arriving_last_does_not_undo_a_newer_one() -> None:
    """Two queries for one user in flight (the worker's and a send's) may answer out of order:
    the one sent first knows less, and must not delete a device the later one found."""
    _bob, devices = _bob_keys()
    tracker = _tracker()
    tracker.query_sent("before-new-device", [BOB])
    tracker.mark_changed([BOB])
    tracker.query_sent("after-new-device", [BOB])
    tracker.receive_query("after-new-device", {"device_keys": {BOB: devices}}, 0)
    update = tracker.receive_query("before-new-device", {"device_keys": {BOB: {}}}, 0)
    assert update.removed == []
    assert [d.device_id for d in tracker.active_devices(BOB)] == ["BOBDEV"]
    assert not tracker.is_outdated(BOB)
    # A query sent later still applies, removals included.
    _answer(tracker, {})
    assert tracker.active_devices(BOB) == []


def test_failing_server_backs_off_15s_doubling_to_15min() -> None:
    cache = FailuresCache()
    delays = []
    for _ in range(8):
        cache.failed("remote", 0)
        delays.append(cache.delay_ms("remote"))
    assert delays == [15_000, 30_000, 60_000, 120_000, 240_000, 480_000, 900_000, 900_000]
    tracker = _tracker()
    tracker.query_sent("q", [BOB])
    tracker.receive_query("q", {"failures": {"test": {}}, "device_keys": {}}, 1_000)
    assert tracker.users_to_query(1_000) == []
    assert tracker.users_to_query(15_999) == []
    assert tracker.users_to_query(16_000) == [BOB]
    tracker.query_sent("q2", [BOB])
    tracker.receive_query("q2", {"failures": {"test": {}}, "device_keys": {}}, 16_000)
    assert tracker.users_to_query(16_000 + 29_999) == []
    assert tracker.users_to_query(16_000 + 30_000) == [BOB]


def test_a_failed_query_request_backs_off_the_background_not_a_share() -> None:
    """The request failing as a whole (our homeserver's 5xx, a timeout) says nothing about
    Bob's server: the background's queries back off, but a room key share asks again (and
    its sender fails the send if it fails again) instead of sharing with no device of his."""
    server, (alice, bob) = make_clients("alice", "bob")
    server.create_room(ROOM, alice.user_id, [bob.user_id])
    alice.sync()
    (query,) = alice.machine.share_room_key(ROOM, [alice.user_id, bob.user_id])
    assert query.kind is RequestKind.KEYS_QUERY and bob.user_id in query.body["device_keys"]
    alice.machine.mark_request_as_failed(query.id, {"errcode": "M_UNKNOWN"})
    alice.machine.receive_sync({"device_lists": {"changed": [bob.user_id]}})
    assert _queries(alice) == []  # the background waits
    (again,) = alice.machine.share_room_key(ROOM, [alice.user_id, bob.user_id])
    assert again.kind is RequestKind.KEYS_QUERY and bob.user_id in again.body["device_keys"]
    alice.answer(again)
    (claim,) = alice.machine.share_room_key(ROOM, [alice.user_id, bob.user_id])
    assert claim.kind is RequestKind.KEYS_CLAIM
    alice.machine.mark_request_as_failed(claim.id, {"errcode": "M_UNKNOWN"})
    (claim,) = alice.machine.share_room_key(ROOM, [alice.user_id, bob.user_id])
    assert claim.kind is RequestKind.KEYS_CLAIM  # not m.no_olm for Bob's device
    alice.answer(claim)
    to_device = alice.machine.share_room_key(ROOM, [alice.user_id, bob.user_id])
    assert [r.kind for r in to_device] == [RequestKind.TO_DEVICE]
    assert bob.user_id in to_device[0].body["messages"]


def test_device_lists_left_untracks() -> None:
    server, (alice, bob) = make_clients("alice", "bob")
    server.create_room(ROOM, alice.user_id, [bob.user_id])
    alice.tick()
    alice.machine.take_changes()
    alice.machine.receive_sync({"device_lists": {"left": [bob.user_id, alice.user_id]}})
    changes = alice.machine.take_changes()
    assert [(r.user_id, r.tracked) for r in changes.tracked_users] == [(bob.user_id, False)]
    alice.machine.receive_sync({"device_lists": {"changed": [bob.user_id]}})
    assert _queries(alice) == []  # no longer followed


def test_removed_device_rotates_room_key() -> None:
    server, (alice, bob) = make_clients("alice", "bob")
    bob2 = Client(server, bob.user_id, "BOBPHONE")
    bob2.flush()
    server.create_room(ROOM, alice.user_id, [bob.user_id])
    for client in (alice, bob, bob2):
        client.tick()
    first = alice.send(ROOM, "both")
    del server.device_keys[bob.user_id]["BOBPHONE"]
    alice.machine.receive_sync({"device_lists": {"changed": [bob.user_id]}})
    alice.flush()
    second = alice.send(ROOM, "one")
    assert second["content"]["session_id"] != first["content"]["session_id"]
    bob.tick()
    assert bob.read(ROOM, second) == "one"
