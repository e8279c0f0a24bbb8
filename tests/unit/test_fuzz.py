"""Broken input never raises out of the engine and never breaks the next genuine message."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2eproxy.crypto.results import Decrypted, DecryptionFailure
from e2eproxy.protocol import api
from e2eproxy.protocol.api import RequestKind
from tests.support.fuzz import near_valid
from tests.support.machine_pair import Client, FakeServer, make_clients

ROOM = "!room:test"
DEEP = b"[" * 100_000 + b"]" * 100_000  # deeper than Python's JSON parser recurses

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
KEYS = ["type", "content", "sender", "algorithm", "ciphertext", "session_id", "sender_key",
        "body", "event_id", "origin_server_ts", "unsigned", "m.relations", "m.replace"]


def _world() -> tuple[FakeServer, Client, Client, dict[str, Any], dict[str, Any]]:
    server, (alice, bob) = make_clients("alice", "bob")
    server.create_room(ROOM, alice.user_id, [bob.user_id])
    alice.tick()
    bob.tick()
    alice.share(ROOM)
    to_device = server.inbox[bob.key][0]
    event = server.post_event(ROOM, alice.user_id,
                              alice.machine.encrypt(ROOM, "m.room.message", {"body": "x"}))
    # Bob holds the genuine key before any fuzzing: what follows must not take it from him.
    bob.tick()
    assert bob.read(ROOM, event) == "x"
    return server, alice, bob, to_device, event


SERVER, ALICE, BOB, TO_DEVICE, EVENT = _world()


def _mutate(value: Any, path: list[str], new: Any) -> Any:
    value = copy.deepcopy(value)
    target = value
    for key in path[:-1]:
        if not isinstance(target, dict):
            return value
        target = target.setdefault(key, {})
    if isinstance(target, dict):
        target[path[-1]] = new
    return value


def _flip(text: str, position: int) -> str:
    if not text:
        return text
    i = position % len(text)
    return text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1:]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.lists(st.sampled_from(KEYS), min_size=1, max_size=3), new=json_values)
def test_mutated_room_events_give_failures(path: list[str], new: Any) -> None:
    result = BOB.machine.decrypt_room_event(ROOM, _mutate(EVENT, path, new))
    # Never an exception, and never anything but the sender's own words: a mutation outside
    # the ciphertext may still decrypt, but only to what Alice wrote.
    if isinstance(result, Decrypted):
        assert result.event["content"]["body"] == "x"
    else:
        assert isinstance(result, DecryptionFailure)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(position=st.integers(0, 10_000), cut=st.integers(0, 400))
def test_corrupted_megolm_ciphertext(position: int, cut: int) -> None:
    event = copy.deepcopy(EVENT)
    ciphertext = event["content"]["ciphertext"]
    event["content"]["ciphertext"] = _flip(ciphertext, position)[: len(ciphertext) - cut]
    event["event_id"] = f"$mut{position}-{cut}"
    result = BOB.machine.decrypt_room_event(ROOM, event)
    assert isinstance(result, DecryptionFailure)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.dictionaries(
    st.sampled_from(["to_device", "device_lists", "rooms", "device_one_time_keys_count",
                     "device_unused_fallback_key_types", "next_batch"]),
    json_values, max_size=6))
def test_random_sync_bodies(body: dict[str, Any]) -> None:
    BOB.machine.receive_sync(body)
    BOB.machine.take_changes()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.lists(st.sampled_from(KEYS), min_size=1, max_size=4), new=json_values,
       position=st.integers(0, 10_000))
def test_mutated_olm_to_device(path: list[str], new: Any, position: int) -> None:
    event = _mutate(TO_DEVICE, path, new)
    events = [event]
    content = TO_DEVICE["content"]
    mine = next(iter(content["ciphertext"]))
    flipped = copy.deepcopy(TO_DEVICE)
    body = flipped["content"]["ciphertext"][mine]["body"]
    flipped["content"]["ciphertext"][mine]["body"] = _flip(body, position)[: len(body) - 3]
    events.append(flipped)
    result = BOB.machine.receive_sync({"to_device": {"events": events}})
    # Bob already holds the genuine key, and a flipped or mutated copy is no better one.
    assert result.room_keys == []


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(response=json_values)
def test_random_responses(response: Any) -> None:
    for request in ALICE.machine.outgoing_requests():
        ALICE.machine.mark_request_as_sent(request.id, response)
    ALICE.machine.receive_sync({"device_lists": {"changed": [BOB.user_id]}})
    for request in ALICE.machine.outgoing_requests():
        ALICE.machine.mark_request_as_sent(request.id, response)


def test_state_not_poisoned_after_fuzzing() -> None:
    test_random_sync_bodies()
    test_mutated_olm_to_device()
    test_random_responses()
    ALICE.machine.receive_sync({"device_lists": {"changed": [BOB.user_id]}})
    ALICE.flush()
    BOB.flush()
    assert BOB.read(ROOM, EVENT) == "x"
    ALICE.machine.discard_room_key(ROOM)
    fresh = ALICE.send(ROOM, "still works")
    BOB.tick()
    assert BOB.read(ROOM, fresh) == "still works"


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(plaintext=st.binary(max_size=120)
       | json_values.map(lambda v: json.dumps({"type": "m.room.message", "content": v,
                                               "room_id": ROOM}).encode())
       | st.just(DEEP))
def test_hostile_megolm_plaintext(plaintext: bytes) -> None:
    """A room member writes what they like inside their own Megolm session: any plaintext is
    a failure or an event of this room, never an exception; the next genuine message reads."""
    record = ALICE.machine._outbound.get(ROOM)
    assert record is not None
    content = {"algorithm": "m.megolm.v1.aes-sha2", "sender_key": ALICE.machine.identity_keys[
        "curve25519"], "session_id": record.session.session_id, "device_id": ALICE.device_id,
        "ciphertext": record.session.encrypt(plaintext).to_base64()}
    event = SERVER.post_event(ROOM, ALICE.user_id, content)
    result = BOB.machine.decrypt_room_event(ROOM, event)
    if isinstance(result, Decrypted):
        assert isinstance(result.event["content"], dict)
    genuine = ALICE.send(ROOM, "still")  # shares a new session first when one is due
    BOB.tick()
    assert BOB.read(ROOM, genuine) == "still"


QUERY_ANSWER = SERVER.handle(ALICE.key, api.keys_query([BOB.user_id]))
BACKOFF_CAP_MS = 16 * 60_000


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_near_valid_keys_query_answers(data: st.DataObject) -> None:
    """The homeserver's /keys/query answer, with fields missing, retyped, huge or deep: never
    an exception, and the next genuine answer leaves Bob's device as it is."""
    hostile = data.draw(near_valid(QUERY_ANSWER))
    ALICE.machine.receive_sync({"device_lists": {"changed": [BOB.user_id]}})
    for query in ALICE.machine.outgoing_requests():
        ALICE.machine.mark_request_as_sent(
            query.id, hostile if query.kind is RequestKind.KEYS_QUERY else {})
    SERVER.clock.advance(BACKOFF_CAP_MS)  # an answer's `failures` backs the server off
    ALICE.machine.receive_sync({"device_lists": {"changed": [BOB.user_id]}})
    ALICE.flush()
    device = ALICE.machine.get_device(BOB.user_id, BOB.device_id)
    assert device is not None and not device.deleted
    assert device.keys == SERVER.device_keys[BOB.user_id][BOB.device_id]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_near_valid_sync_bodies(data: st.DataObject) -> None:
    """A genuine /sync body (a room key, device lists, key counts, room state) made near-valid:
    never an exception, and the room key of the next genuine sync lands."""
    BOB.machine.receive_sync(data.draw(near_valid(_sync_with_a_new_key())))
    BOB.persist()
    BOB.machine.receive_sync(_sync_with_a_new_key())
    BOB.persist()
    event = SERVER.post_event(ROOM, ALICE.user_id,
                              ALICE.machine.encrypt(ROOM, "m.room.message", {"body": "after"}))
    assert BOB.read(ROOM, event) == "after"


def _sync_with_a_new_key() -> dict[str, Any]:
    ALICE.machine.discard_room_key(ROOM)
    ALICE.share(ROOM)
    body = SERVER.sync_body(BOB.key)
    body["device_lists"]["changed"] = [ALICE.user_id]
    body["rooms"]["join"][ROOM] = {"state": {"events": [
        {"type": "m.room.member", "state_key": BOB.user_id, "sender": BOB.user_id,
         "content": {"membership": "join"}, "event_id": "$m"}]}}
    return body
