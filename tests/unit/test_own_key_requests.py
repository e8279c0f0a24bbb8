"""Room key requests between our own devices (rust-sdk's policy), engines wired by the fake
router: a device missing a key asks our other devices that it verified, once per session; a
verified own device answers with the session it holds; the answer is kept as imported only from
a verified device of ours and only for a session we asked for, and the request is then
cancelled on the other devices asked."""

from __future__ import annotations

from typing import Any

import vodozemac

from e2eproxy.crypto.results import Decrypted, DecryptionFailure, FailureReason
from e2eproxy.crypto.settings import LocalTrust
from e2eproxy.crypto.trust import DeviceTrust
from e2eproxy.protocol.api import OutgoingRequest, RequestKind
from tests.support.machine_pair import Client, FakeServer, make_clients
from tests.unit.test_trust_engine import bootstrap, device, pump, sas

ROOM = "!own:test"
KEY_REQUEST, FORWARDED = "m.room_key_request", "m.forwarded_room_key"


def _own_devices() -> tuple[FakeServer, Client, Client, dict[str, Any]]:
    """OLD sent a message before NEW logged in (NEW never got that key); then NEW and OLD
    verified each other with SAS."""
    server, (old,) = make_clients("alice/OLD")
    server.create_room(ROOM, old.user_id, [])
    old.tick()
    event = old.send(ROOM, "before NEW")
    new = _login(server, old.user_id, "NEW")
    old.tick()
    bootstrap(old)
    pump(old, new)
    sas(new, old, new.machine.trust.start_to_device(old.user_id, old.device_id))
    pump(old, new)
    assert new.machine.trust.device_trust(device(new, old)) is DeviceTrust.VERIFIED
    assert old.machine.trust.device_trust(device(old, new)) is DeviceTrust.VERIFIED
    return server, old, new, event


def _login(server: FakeServer, user_id: str, device_id: str) -> Client:
    client = Client(server, user_id, device_id)
    client.flush()
    client.tick()
    return client


def _missing(client: Client, event: dict[str, Any]) -> bool:
    result = client.decrypt(ROOM, event)
    return isinstance(result, DecryptionFailure) and (
        result.reason is FailureReason.MISSING_SESSION
    )


def _key_requests(server: FakeServer, since: int = 0) -> list[OutgoingRequest]:
    return [r for _owner, r in server.requests[since:]
            if r.kind is RequestKind.TO_DEVICE and f"/{KEY_REQUEST}/" in r.path]


def _encrypted_to(server: FakeServer, recipient: Client, since: int = 0) -> list[str]:
    """Who sent Olm-encrypted to-device messages to ``recipient`` since ``since``."""
    return [owner[1] for owner, r in server.requests[since:]
            if r.kind is RequestKind.TO_DEVICE and "/m.room.encrypted/" in r.path
            and recipient.device_id in r.body["messages"].get(recipient.user_id, {})]


def _forwarded_content(holder: Client, event: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What a forward of ``event``'s session from ``holder``'s copy carries."""
    record = holder.machine._inbound.get(ROOM, event["content"]["session_id"])
    assert record is not None
    exported = record.session.export_at(record.first_known_index)
    assert exported is not None
    return {
        "algorithm": "m.megolm.v1.aes-sha2", "room_id": ROOM,
        "sender_key": record.sender_key, "session_id": record.session_id,
        "session_key": exported.to_base64(),
        "sender_claimed_ed25519_key": record.signing_key,
        "forwarding_curve25519_key_chain": [], **extra,
    }


def _olm_send(sender: Client, recipient: Client, event_type: str,
              content: dict[str, Any]) -> None:
    """``sender`` sends one Olm-encrypted to-device event of any type to ``recipient`` (no
    public call sends an arbitrary type), claiming a one-time key if it has no session."""
    target = device(sender, recipient)
    claim = sender.machine._claimer.claim_request([target])
    if claim is not None and not sender.machine._olm.has_session(
        target.keys["keys"][f"curve25519:{target.device_id}"]
    ):
        sender.machine._queue.add(claim, in_flight=True)
        sender.answer(claim)
    encrypted = sender.machine._olm.encrypt(target, event_type, content)
    assert encrypted is not None
    sender.server.inbox.setdefault(recipient.key, []).append(
        {"type": "m.room.encrypted", "sender": sender.user_id, "content": encrypted}
    )


def test_a_missing_key_comes_from_our_verified_device_as_imported() -> None:
    server, old, new, event = _own_devices()
    session_id = event["content"]["session_id"]
    assert _missing(new, event)
    assert new.machine.request_room_key(ROOM, event)
    new.flush()
    [request] = _key_requests(server)
    [(to_device, content)] = request.body["messages"][new.user_id].items()
    assert to_device == old.device_id
    assert content["action"] == "request" and content["requesting_device_id"] == "NEW"
    assert content["body"] == {"algorithm": "m.megolm.v1.aes-sha2", "room_id": ROOM,
                               "session_id": session_id,
                               "sender_key": event["content"]["sender_key"]}
    assert request.id == content["request_id"]  # as rust-sdk: the txn id is the request id

    old.tick()  # answers with the session it holds, over Olm
    result = new.tick()
    assert [(k.room_id, k.session_id, k.first_known_index) for k in result.room_keys] == [
        (ROOM, session_id, 0)
    ]
    decrypted = new.decrypt(ROOM, event)
    assert isinstance(decrypted, Decrypted), decrypted
    assert decrypted.event["content"]["body"] == "before NEW"
    assert decrypted.trust.value == "imported" and decrypted.sender_device == old.device_id
    stored = new.store.tables["igs"][(ROOM, session_id)]
    assert stored.imported and stored.sender_key == old.machine.identity_keys["curve25519"]
    assert stored.signing_key == old.machine.identity_keys["ed25519"]
    # Only one device was asked and it answered: nobody to cancel the request with.
    assert [r for r in _key_requests(server) if r is not request] == []


def test_the_request_is_cancelled_on_the_other_devices_asked() -> None:
    server, old, new, event = _own_devices()
    third = _login(server, new.user_id, "THIRD")  # verified by NEW; it lacks the key too
    new.tick()
    new.machine.set_local_trust(new.user_id, "THIRD", LocalTrust.VERIFIED)
    assert new.machine.request_room_key(ROOM, event)
    new.flush()
    [request] = _key_requests(server)
    assert sorted(request.body["messages"][new.user_id]) == ["OLD", "THIRD"]
    request_id = request.body["messages"][new.user_id]["OLD"]["request_id"]
    old.tick()
    third.tick()
    since = len(server.requests)
    new.tick()
    assert not _missing(new, event)
    [cancel] = _key_requests(server, since)
    assert cancel.body["messages"] == {new.user_id: {"THIRD": {
        "action": "request_cancellation", "request_id": request_id,
        "requesting_device_id": "NEW"}}}


def test_one_request_per_session_and_only_to_verified_devices() -> None:
    server, old, new, event = _own_devices()
    _login(server, new.user_id, "UNVERIFIED")
    new.tick()
    assert new.machine.request_room_key(ROOM, event)
    assert not new.machine.request_room_key(ROOM, event)  # pending: not asked again
    new.flush()
    assert not new.machine.request_room_key(ROOM, event)
    [request] = _key_requests(server)
    assert list(request.body["messages"][new.user_id]) == ["OLD"]  # not UNVERIFIED
    old.tick()
    new.tick()
    assert not new.machine.request_room_key(ROOM, event)  # held now
    assert len(_key_requests(server)) == 1


def test_no_verified_own_device_no_request() -> None:
    server, (old, new) = make_clients("alice/OLD", "alice/NEW")
    server.create_room(ROOM, old.user_id, [])
    old.tick()
    event = old.send(ROOM, "hello")
    server.inbox[new.key] = []  # NEW never gets the key
    assert new.machine.trust.device_trust(device(new, old)) is DeviceTrust.UNVERIFIED
    assert not new.machine.request_room_key(ROOM, event)
    new.flush()
    assert _key_requests(server) == []
    new.machine.set_local_trust(new.user_id, "OLD", LocalTrust.VERIFIED)  # later verified
    assert new.machine.request_room_key(ROOM, event)


def test_an_unverified_own_device_gets_no_key_and_its_keys_are_refused() -> None:
    server, old, new, event = _own_devices()
    stranger = _login(server, new.user_id, "UNVERIFIED")
    old.tick()
    new.tick()  # NEW knows the device, and has not verified it
    session_id = event["content"]["session_id"]
    for asking in (stranger, new):  # the same request, from an unverified then a verified one
        server.inbox.setdefault(old.key, []).append({
            "type": KEY_REQUEST, "sender": asking.user_id, "content": {
                "action": "request", "requesting_device_id": asking.device_id,
                "request_id": f"r-{asking.device_id}",
                "body": {"algorithm": "m.megolm.v1.aes-sha2", "room_id": ROOM,
                         "session_id": session_id}}})
    since = len(server.requests)
    old.tick()
    assert _encrypted_to(server, stranger, since) == []
    assert _encrypted_to(server, new, since) == ["OLD"]
    server.inbox[new.key] = []

    # The unverified device's forward of the key NEW asked for is not taken.
    assert new.machine.request_room_key(ROOM, event)
    new.flush()
    server.inbox[old.key] = []
    _olm_send(stranger, new, FORWARDED, _forwarded_content(old, event))
    result = new.sync()
    assert [(f.sender, f.event_type, f.reason) for f in result.failures] == [
        (new.user_id, FORWARDED, "unverified_device")
    ]
    assert result.room_keys == [] and _missing(new, event)


def test_another_users_forwarded_key_is_refused() -> None:
    server, old, new, event = _own_devices()
    bob = _login(server, "@bob:test", "BOBDEV")
    server.create_room("!bob:test", bob.user_id, [new.user_id])  # they know each other's keys
    bob.tick()
    new.tick()
    assert new.machine.request_room_key(ROOM, event)
    new.flush()
    server.inbox[old.key] = []
    _olm_send(bob, new, FORWARDED, _forwarded_content(old, event))
    result = new.sync()
    assert [(f.sender, f.reason) for f in result.failures] == [(bob.user_id, "not_own_device")]
    assert result.room_keys == [] and _missing(new, event)


def test_a_forwarded_key_nobody_asked_for_is_refused() -> None:
    _server, old, new, event = _own_devices()
    _olm_send(old, new, FORWARDED, _forwarded_content(old, event))
    result = new.sync()
    assert [(f.sender, f.reason) for f in result.failures] == [(old.user_id, "not_requested")]
    assert result.room_keys == [] and _missing(new, event)


def test_a_bad_key_is_refused_and_a_good_one_keeps_its_shared_history_flag() -> None:
    server, old, new, event = _own_devices()
    assert new.machine.request_room_key(ROOM, event)
    new.flush()
    server.inbox[old.key] = []  # OLD does not answer by itself here
    other = vodozemac.InboundGroupSession(vodozemac.GroupSession().session_key).export_at(0)
    assert other is not None  # a key that is not the session it names
    _olm_send(old, new, FORWARDED, _forwarded_content(old, event, session_key=other.to_base64()))
    _olm_send(old, new, FORWARDED, _forwarded_content(old, event, session_key="junk"))
    _olm_send(old, new, FORWARDED, {"algorithm": "m.megolm.v1.aes-sha2", "room_id": ROOM})
    result = new.sync()
    assert [f.reason for f in result.failures] == ["bad_key", "bad_key", "malformed"]
    assert _missing(new, event)
    alias = _forwarded_content(old, event, **{"org.matrix.msc3061.shared_history": True})
    _olm_send(old, new, FORWARDED, alias)
    result = new.sync()
    assert result.failures == [] and len(result.room_keys) == 1
    stored = new.store.tables["igs"][(ROOM, event["content"]["session_id"])]
    assert stored.imported and stored.shared_history


def test_a_session_only_in_the_store_is_answered_once_loaded() -> None:
    server, old, new, event = _own_devices()
    old.restart(with_inbound=False)  # sessions are loaded on demand, as in the proxy
    assert new.machine.request_room_key(ROOM, event)
    new.flush()
    result = old.sync()
    key = (ROOM, event["content"]["session_id"])
    assert result.sessions_to_load == [key]
    since = len(server.requests)
    old.flush()
    assert _encrypted_to(server, new, since) == []  # nothing until the store's copy is here
    records, replays = old.store.inbound([key])
    old.machine.load_inbound_group_sessions(records, replays)
    old.flush()
    assert _encrypted_to(server, new, since) == ["OLD"]
    new.tick()
    assert not _missing(new, event)


def test_without_an_olm_session_one_is_claimed_and_the_answer_follows() -> None:
    server, old, new, event = _own_devices()
    old.machine._olm._sessions.clear()  # OLD lost its Olm sessions with NEW
    assert new.machine.request_room_key(ROOM, event)
    new.flush()
    since = len(server.requests)
    old.tick()
    claims = [r for owner, r in server.requests[since:]
              if owner == old.key and r.kind is RequestKind.KEYS_CLAIM]
    assert claims, "OLD claimed a one-time key of NEW's"
    assert _encrypted_to(server, new, since) == ["OLD"]
    new.tick()
    assert not _missing(new, event)


def test_a_request_cancelled_before_its_session_was_loaded_is_not_answered() -> None:
    server, old, new, event = _own_devices()
    old.restart(with_inbound=False)
    assert new.machine.request_room_key(ROOM, event)
    new.flush()
    [request] = _key_requests(server)
    content = request.body["messages"][new.user_id]["OLD"]
    server.inbox.setdefault(old.key, []).append({"type": KEY_REQUEST, "sender": new.user_id,
                                                 "content": {**content, "body": None,
                                                             "action": "request_cancellation"}})
    key = (ROOM, event["content"]["session_id"])
    assert old.sync().sessions_to_load == [key]
    since = len(server.requests)
    old.machine.load_inbound_group_sessions(*old.store.inbound([key]))
    old.flush()
    assert _encrypted_to(server, new, since) == []
