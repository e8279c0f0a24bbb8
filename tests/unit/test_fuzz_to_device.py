"""Hostile to-device events reach past Olm into every handler (issue 13, item 4): the content of
room keys, forwarded keys, withheld notices, key requests, secrets and verification events, and
the Olm payload around them, are fuzzed and really Olm-encrypted by a peer's engine, from another
user and from our own verified device. The engine never raises, a genuine room key after them
in the same batch still lands, and what it keeps stays encodable by the store."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from e2eproxy.crypto.settings import MEGOLM_ALGORITHM
from tests.support.fuzz import FUZZ, hostile, near_valid
from tests.support.fuzz_peers import ROOM, Peers

PEERS = Peers()
ALICE, BOB, PHONE = PEERS.alice, PEERS.bob, PEERS.phone
TEMPLATES = PEERS.templates


def _asked_for(event_type: str) -> None:
    """Before a forwarded key or a secret: Bob has asked his phone for it (so the content is
    parsed past "nobody asked"), as his engine does for a key it lacks or a secret it misses."""
    if event_type == "m.forwarded_room_key":
        content = TEMPLATES[event_type]
        event = {"type": "m.room.encrypted", "sender": ALICE.user_id, "content": {
            "algorithm": MEGOLM_ALGORITHM, "session_id": content["session_id"],
            "sender_key": content["sender_key"], "ciphertext": "AAAA"}}
        BOB.machine.request_room_key(ROOM, event)
    elif event_type == "m.secret.send":
        BOB.machine._gossip._asked["s1"] = ("m.cross_signing.master", PHONE.device_id)


def _receive_then_genuine(hostile_events: list[Any]) -> None:
    genuine, session_id = PEERS.genuine_room_key()
    result = BOB.machine.receive_sync({"to_device": {"events": [*hostile_events, genuine]}})
    assert session_id in [key.session_id for key in result.room_keys], result.failures
    PEERS.settle()


def test_each_genuine_template_reaches_its_handler() -> None:
    """The templates the fuzzing starts from are taken as they are: the forwarded key lands,
    the phone's request opens a flow (so a near-valid one is parsed as far as it can go)."""
    _asked_for("m.forwarded_room_key")
    content = TEMPLATES["m.forwarded_room_key"]
    event = PEERS.olm(PHONE, PEERS.envelope(PHONE, "m.forwarded_room_key", content))
    result = BOB.machine.receive_sync({"to_device": {"events": [event]}})
    assert [k.session_id for k in result.room_keys] == [content["session_id"]], result.failures
    request = TEMPLATES["m.key.verification.request"]
    event = PEERS.olm(PHONE, PEERS.envelope(PHONE, "m.key.verification.request", request))
    BOB.machine.receive_sync({"to_device": {"events": [event]}})
    assert [f.other_device for f in BOB.machine.trust.flows.flows()] == [PHONE.device_id]
    PEERS.settle()


@FUZZ
@given(data=st.data(), event_type=st.sampled_from(sorted(TEMPLATES)),
       sender=st.sampled_from(["alice", "phone"]), encrypted=st.booleans())
def test_hostile_content_of_every_to_device_type(
    data: st.DataObject, event_type: str, sender: str, encrypted: bool
) -> None:
    content = data.draw(near_valid(TEMPLATES[event_type]))
    _asked_for(event_type)
    client = ALICE if sender == "alice" else PHONE
    if encrypted:
        event = PEERS.olm(client, PEERS.envelope(client, event_type, content))
    else:
        event = {"type": event_type, "sender": client.user_id, "content": content}
    _receive_then_genuine([event])


@FUZZ
@given(data=st.data(), event_type=st.sampled_from(sorted(TEMPLATES)))
def test_hostile_olm_payload_around_genuine_content(data: st.DataObject, event_type: str) -> None:
    envelope = PEERS.envelope(PHONE, event_type, TEMPLATES[event_type])
    _receive_then_genuine([PEERS.olm(PHONE, data.draw(near_valid(envelope)))])


@FUZZ
@given(raw=st.binary(max_size=200) | st.text(max_size=100).map(
    lambda t: t.encode("utf-8", "surrogatepass")))
def test_olm_plaintext_that_is_not_json(raw: bytes) -> None:
    _receive_then_genuine([PEERS.olm(ALICE, raw)])


@FUZZ
@given(events=st.lists(st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(TEMPLATES)) | hostile, "sender": hostile,
     "content": hostile}), max_size=4))
def test_hostile_events_without_olm(events: list[Any]) -> None:
    _receive_then_genuine(events)
