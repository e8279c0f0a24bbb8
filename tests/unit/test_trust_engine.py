"""Trust through the engine (machine.trust), engines wired by the fake router: cross-signing
bootstrap seen by others, SAS to-device and in a room ending in trust and signatures, secrets
taken from a verified own device, sharing strategies, and an identity change after verification.
"""

from __future__ import annotations

from e2eproxy.crypto.changes import DeviceRecord
from e2eproxy.crypto.settings import LocalTrust, SharingStrategy
from e2eproxy.crypto.trust import DeviceTrust
from e2eproxy.crypto.verification import Phase, Verification
from e2eproxy.protocol import api
from e2eproxy.protocol.api import RequestKind
from tests.support.machine_pair import Client, FakeServer, make_clients

ROOM = "!trust:test"


def bootstrap(client: Client) -> None:
    """What `ctl cross-signing bootstrap` does, against the fake server."""
    plan = client.machine.trust.bootstrap()
    client.persist()
    client.server.handle(client.key, api.device_signing_upload(plan.device_signing))
    client.machine.trust.bootstrap_uploaded()
    client.server.handle(client.key, api.signatures_upload(plan.signatures))
    client.persist()


def device(of: Client, user: Client) -> DeviceRecord:
    found = of.machine.get_device(user.user_id, user.device_id)
    assert found is not None
    return found


def pump(*clients: Client, rounds: int = 12) -> None:
    """Sync and send until quiet, delivering room events (in-room verification) too."""
    for _ in range(rounds):
        for client in clients:
            client.tick()
        events, clients[0].server.room_messages[:] = list(clients[0].server.room_messages), []
        for event in events:
            for client in clients:
                if client.user_id != event["sender"] or client is not clients[0]:
                    client.machine.trust.receive_room_event(event["room_id"], event)
                    client.persist()
        if not events and not any(client.server.inbox.get(client.key) for client in clients):
            for client in clients:
                client.flush()
            if not any(client.server.inbox.get(client.key) for client in clients):
                return


def flow_of(client: Client) -> Verification:
    [flow] = client.machine.trust.flows.flows()
    return flow


def sas(a: Client, b: Client, start: Verification) -> tuple[Verification, Verification]:
    """Run a SAS that `a` requested: b accepts, a starts SAS by itself (it has no user to pick
    a method), both compare and confirm."""
    pump(a, b)
    theirs = flow_of(b)
    b.machine.trust.act(theirs.flow_id.id, "accept")
    pump(a, b)
    assert start.phase is Phase.KEYS_EXCHANGED, start.phase
    assert start.emoji() is not None and start.emoji() == theirs.emoji()
    assert start.decimals() == theirs.decimals()
    a.machine.trust.act(start.flow_id.id, "confirm")
    b.machine.trust.act(theirs.flow_id.id, "confirm")
    pump(a, b)
    assert (start.phase, theirs.phase) == (Phase.DONE, Phase.DONE), (start.phase, theirs.phase)
    return start, theirs


def room_of(server: FakeServer, *clients: Client) -> None:
    server.create_room(ROOM, clients[0].user_id, [c.user_id for c in clients[1:]])
    for client in clients:
        client.tick()


def test_a_bootstrapped_device_is_cross_signed_in_others_eyes() -> None:
    server, (alice, bob) = make_clients("alice", "bob")
    room_of(server, alice, bob)
    assert bob.machine.trust.device_trust(device(bob, alice)) is DeviceTrust.UNVERIFIED
    bootstrap(alice)
    pump(alice, bob)
    assert bob.machine.trust.device_trust(device(bob, alice)) is DeviceTrust.CROSS_SIGNED
    status = alice.machine.trust.status()
    assert status["has_identity"] and status["device_signed"] and status["trusted"]
    assert status["private_keys"] == {"master": True, "self_signing": True, "user_signing": True}
    # They survive a restart (private keys in the store, identities pinned).
    alice.restart()
    assert alice.machine.trust.status() == status


def test_sas_to_device_verifies_the_other_user_and_signs_their_identity() -> None:
    server, (alice, bob) = make_clients("alice", "bob")
    room_of(server, alice, bob)
    bootstrap(alice)
    bootstrap(bob)
    pump(alice, bob)
    start = alice.machine.trust.start_to_device(bob.user_id, bob.device_id)
    sas(alice, bob, start)
    assert alice.machine.trust.device_trust(device(alice, bob)) is DeviceTrust.VERIFIED
    assert bob.machine.trust.device_trust(device(bob, alice)) is DeviceTrust.VERIFIED
    # Each signed the other's master key with its user-signing key.
    uploads = [r for _, r in server.requests if r.kind is RequestKind.SIGNATURES_UPLOAD
               and r.path.endswith("/signatures/upload")]
    signed_users = {user for r in uploads for user in r.body}
    assert {alice.user_id, bob.user_id} <= signed_users
    pump(alice, bob)
    alice.restart()
    assert alice.machine.trust.state.user_verified(bob.user_id)


def test_sas_in_a_room_with_another_user() -> None:
    server, (alice, bob) = make_clients("alice", "bob")
    room_of(server, alice, bob)
    bootstrap(alice)
    bootstrap(bob)
    pump(alice, bob)
    content = alice.machine.trust.room_request(bob.user_id)
    request = {"type": "m.room.message", "content": content, "sender": alice.user_id,
               "event_id": "$request", "room_id": ROOM, "origin_server_ts": server.clock.now_ms()}
    start = alice.machine.trust.request_sent_in_room(ROOM, "$request", bob.user_id)
    bob.machine.trust.receive_room_event(ROOM, request)
    alice.machine.trust.receive_room_event(ROOM, request)  # its own echo: ignored
    _start, theirs = sas(alice, bob, start)
    assert theirs.flow_id.room_id == ROOM
    assert alice.machine.trust.state.user_verified(bob.user_id)
    assert bob.machine.trust.state.user_verified(alice.user_id)


def test_a_new_own_device_gets_the_cross_signing_keys_after_verification() -> None:
    _server, (old, new) = make_clients("alice/OLD", "alice/NEW")
    bootstrap(old)
    pump(old, new)
    assert new.machine.trust.status()["private_keys"]["self_signing"] is False
    assert new.machine.trust.device_trust(device(new, old)) is DeviceTrust.CROSS_SIGNED
    start = new.machine.trust.start_to_device(old.user_id, old.device_id)
    sas(new, old, start)
    pump(old, new)
    status = new.machine.trust.status()
    assert status["private_keys"] == {"master": True, "self_signing": True, "user_signing": True}
    assert status["device_signed"], "the new device signed itself with the self-signing key"
    assert old.machine.trust.device_trust(device(old, new)) is DeviceTrust.VERIFIED


def test_secrets_go_only_to_verified_own_devices() -> None:
    server, (old, new) = make_clients("alice/OLD", "alice/NEW")
    bootstrap(old)
    pump(old, new)
    # A request from our own device that is not verified is not answered.
    request = {"type": "m.secret.request", "sender": new.user_id, "content": {
        "name": "m.cross_signing.self_signing", "action": "request", "request_id": "r1",
        "requesting_device_id": new.device_id}}
    server.inbox.setdefault(old.key, []).append(request)
    pump(old, new)
    assert new.machine.trust.status()["private_keys"]["self_signing"] is False
    # Nor one from another user, whatever it claims.
    server.inbox.setdefault(old.key, []).append({**request, "sender": "@mallory:test"})
    sent_before = len(server.requests)
    pump(old, new)
    to_mallory = [r for _, r in server.requests[sent_before:]
                  if r.kind is RequestKind.TO_DEVICE and "@mallory:test" in r.body["messages"]]
    assert to_mallory == []


def test_cross_signed_strategy_withholds_from_unsigned_devices() -> None:
    server, (alice, bob) = make_clients("alice", "bob")
    room_of(server, alice, bob)
    alice.machine.set_sharing_strategy(SharingStrategy.CROSS_SIGNED)
    alice.share(ROOM)
    [notice] = server.inbox[bob.key]
    assert notice["type"] == "m.room_key.withheld" and notice["content"]["code"] == "m.unverified"
    bootstrap(bob)
    pump(alice, bob)
    alice.machine.discard_room_key(ROOM)
    event = alice.send(ROOM, "now cross-signed")
    bob.tick()
    assert bob.read(ROOM, event) == "now cross-signed"


def test_an_identity_change_after_verification_withholds_keys_until_accepted() -> None:
    server, (alice, bob) = make_clients("alice", "bob")
    room_of(server, alice, bob)
    bootstrap(alice)
    bootstrap(bob)
    pump(alice, bob)
    sas(alice, bob, alice.machine.trust.start_to_device(bob.user_id, bob.device_id))
    bootstrap(bob)  # bob resets his identity
    pump(alice, bob)
    assert alice.machine.trust.state.violation(bob.user_id)
    alice.machine.discard_room_key(ROOM)
    alice.share(ROOM)
    withheld = [e for e in server.inbox.get(bob.key, []) if e["type"] == "m.room_key.withheld"]
    assert [e["content"]["code"] for e in withheld] == ["m.unverified"]
    server.inbox[bob.key] = []
    assert alice.machine.trust.state.accept_change(bob.user_id)
    assert not alice.machine.trust.state.violation(bob.user_id)
    alice.machine.discard_room_key(ROOM)
    event = alice.send(ROOM, "accepted")
    bob.tick()
    assert bob.read(ROOM, event) == "accepted"


def test_decrypted_events_say_how_trusted_the_sender_is() -> None:
    server, (alice, bob) = make_clients("alice", "bob")
    room_of(server, alice, bob)
    event = alice.send(ROOM, "hi")
    bob.tick()
    assert bob.decrypt(ROOM, event).trust.value == "unverified"  # type: ignore[union-attr]
    bootstrap(alice)
    pump(alice, bob)
    assert bob.decrypt(ROOM, event).trust.value == "cross-signed"  # type: ignore[union-attr]
    bob.machine.set_local_trust(alice.user_id, alice.device_id, LocalTrust.VERIFIED)
    assert bob.decrypt(ROOM, event).trust.value == "verified"  # type: ignore[union-attr]
