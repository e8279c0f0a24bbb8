"""The engine's to-device router: every event, plain or Olm-decrypted, reaches the handler of
its type with who sent it; unknown types are dropped."""

from __future__ import annotations

import pytest

from e2eproxy.crypto.results import SyncResult
from e2eproxy.crypto.to_device import ToDeviceEvent, ToDeviceRouter, ToDeviceSender
from tests.support.machine_pair import Client, make_clients

NEW_TYPE = "org.example.new_kind"


def _capture(client: Client, event_type: str, *, plaintext: bool = True) -> list[ToDeviceEvent]:
    got: list[ToDeviceEvent] = []
    client.machine.register_to_device_handler(
        event_type, lambda event, _result: got.append(event), plaintext=plaintext
    )
    return got


def _olm_to(sender: Client, recipient: Client, event_type: str, content: dict[str, object]
            ) -> None:
    """`sender` sends one Olm-encrypted to-device event to `recipient`, through the engine's
    own claim and Olm parts (no public call sends an arbitrary type yet)."""
    server = sender.server
    server.create_room("!shared:test", sender.user_id, [recipient.user_id])
    sender.tick()  # now each tracks the other and knows its device
    recipient.tick()
    device = sender.machine.get_device(recipient.user_id, recipient.device_id)
    assert device is not None
    claim = sender.machine._claimer.claim_request([device])
    if claim is not None:
        sender.machine._queue.add(claim, in_flight=True)
        sender.answer(claim)
    encrypted = sender.machine._olm.encrypt(device, event_type, content)
    assert encrypted is not None
    server.inbox.setdefault(recipient.key, []).append(
        {"type": "m.room.encrypted", "sender": sender.user_id, "content": encrypted}
    )


def test_a_decrypted_event_of_a_new_type_reaches_its_handler_with_verified_keys() -> None:
    _server, (alice, bob) = make_clients("alice", "bob")
    got = _capture(bob, NEW_TYPE, plaintext=False)
    _olm_to(alice, bob, NEW_TYPE, {"hello": "bob"})
    result = bob.sync()
    assert result.failures == []
    [event] = got
    assert event.encrypted and event.type == NEW_TYPE and event.content == {"hello": "bob"}
    assert event.sender.user_id == alice.user_id
    assert event.sender.curve25519 == alice.machine.identity_keys["curve25519"]
    assert event.sender.ed25519 == alice.machine.identity_keys["ed25519"]
    assert event.sender.verified_keys
    assert event.sender.device is not None and event.sender.device.device_id == alice.device_id


def test_a_plaintext_event_carries_only_the_servers_word_for_its_sender() -> None:
    server, (alice, bob) = make_clients("alice", "bob")
    got = _capture(bob, NEW_TYPE)
    server.inbox.setdefault(bob.key, []).append(
        {"type": NEW_TYPE, "sender": alice.user_id, "content": {"x": 1}}
    )
    bob.sync()
    [event] = got
    assert not event.encrypted
    assert event.sender == ToDeviceSender(alice.user_id)
    assert not event.sender.verified_keys


def test_encrypted_only_types_refuse_plaintext() -> None:
    server, (alice, bob) = make_clients("alice", "bob")
    got = _capture(bob, NEW_TYPE, plaintext=False)
    server.inbox.setdefault(bob.key, []).append(
        {"type": NEW_TYPE, "sender": alice.user_id, "content": {}}
    )
    result = bob.sync()
    assert got == []
    assert [(f.event_type, f.reason) for f in result.failures] == [
        (NEW_TYPE, "must_be_encrypted")
    ]


def test_unknown_types_are_dropped_and_the_rest_of_the_batch_applies() -> None:
    server, (alice, bob) = make_clients("alice", "bob")
    got = _capture(bob, NEW_TYPE)
    server.inbox.setdefault(bob.key, []).extend([
        {"type": "org.example.nobody_handles_this", "sender": alice.user_id, "content": {}},
        {"type": NEW_TYPE, "sender": alice.user_id, "content": {"after": True}},
    ])
    result = bob.sync()
    assert result.failures == []
    assert [e.content for e in got] == [{"after": True}]


def test_a_handler_that_raises_loses_only_its_event() -> None:
    server, (alice, bob) = make_clients("alice", "bob")

    def broken(_event: ToDeviceEvent, _result: SyncResult) -> None:
        raise RuntimeError("a bug")

    bob.machine.register_to_device_handler("org.example.broken", broken)
    got = _capture(bob, NEW_TYPE)
    server.inbox.setdefault(bob.key, []).extend([
        {"type": "org.example.broken", "sender": alice.user_id, "content": {}},
        {"type": NEW_TYPE, "sender": alice.user_id, "content": {}},
    ])
    result = bob.sync()
    assert [f.reason for f in result.failures] == ["internal_error"]
    assert len(got) == 1


def test_one_handler_per_type() -> None:
    router = ToDeviceRouter()
    router.register("m.x", lambda event, result: None)
    with pytest.raises(ValueError):
        router.register("m.x", lambda event, result: None)


def test_the_sync_result_lists_each_new_event_by_the_type_it_carried() -> None:
    """For the shell's metrics: a decrypted event by its inner type, one that would not
    decrypt as m.room.encrypted, and one seen before not at all."""
    server, (alice, bob) = make_clients("alice", "bob")
    _capture(bob, NEW_TYPE, plaintext=False)
    _olm_to(alice, bob, NEW_TYPE, {"hello": "bob"})
    plain = {"type": "org.example.plain", "sender": alice.user_id, "content": {"x": 1}}
    broken = {"type": "m.room.encrypted", "sender": alice.user_id,
              "content": {"algorithm": "m.olm.v1.curve25519-aes-sha2", "ciphertext": {}}}
    server.inbox[bob.key].extend([plain, dict(plain), broken])
    result = bob.sync()
    assert result.to_device_types == [NEW_TYPE, "org.example.plain", "m.room.encrypted"]
