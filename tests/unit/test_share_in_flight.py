"""Sharing must not skip a member whose first /keys/query is still in flight elsewhere."""

from __future__ import annotations

from e2eproxy.crypto.clock import ManualClock
from e2eproxy.crypto.machine import OlmMachine
from e2eproxy.protocol.api import RequestKind

ROOM = "!room:example.org"
ALICE = "@alice:example.org"
BOB = "@bob:example.org"


def test_share_queries_a_member_whose_first_query_is_in_flight() -> None:
    bob = OlmMachine(BOB, "BOBDEVICE", ManualClock())
    bob.update_room_encryption(ROOM, {"algorithm": "m.megolm.v1.aes-sha2"})
    bob.update_room_members(ROOM, {ALICE: "join", BOB: "join"})
    # The background worker takes the query for Alice and has not had an answer yet.
    in_flight = [r for r in bob.outgoing_requests() if r.kind is RequestKind.KEYS_QUERY]
    assert any(ALICE in r.body["device_keys"] for r in in_flight)
    step = bob.share_room_key(ROOM, [ALICE, BOB])
    assert [r.kind for r in step] == [RequestKind.KEYS_QUERY]
    assert ALICE in step[0].body["device_keys"]
    # No session may be shared (and so no message encrypted) before Alice's devices are known.
    try:
        bob.encrypt(ROOM, "m.room.message", {"body": "x"})
    except Exception as exc:  # LocalProtocolError
        assert "shared" in str(exc) or "session" in str(exc)
    else:
        raise AssertionError("encrypted before the members' devices were known")


def test_share_requeries_a_member_whose_device_list_changed() -> None:
    """A new device announced by device_lists.changed must get the key of the next message,
    even when the background worker has not re-queried its owner yet."""
    from tests.support.machine_pair import Client, make_clients

    server, (alice, bob) = make_clients("alice", "bob")
    server.create_room(ROOM, alice.user_id, [bob.user_id])
    alice.tick()
    bob.tick()
    alice.send(ROOM, "first")
    bob2 = Client(server, bob.user_id, "BOBNEW")
    bob2.flush()  # uploads the new device's keys: the server marks Bob's device list changed
    alice.sync()  # Alice learns of the change, but sends before her worker re-queries Bob
    shared_to = alice.share(ROOM)
    recipients = {d for r in shared_to for d in r.body.get("messages", {}).get(bob.user_id, {})}
    assert "BOBNEW" in recipients


def test_a_share_saved_but_never_sent_is_sent_by_the_next_share() -> None:
    """The engine was rebuilt from the store (a restart, or a failed commit rolled back)
    between a share's to-device step and its send: the next share hands out the same saved
    requests at once, so the send that asks for it need not wait for the background."""
    from tests.support.machine_pair import make_room

    server, (alice, bob) = make_room(ROOM, "alice", "bob")
    members = [alice.user_id, bob.user_id]
    for _ in range(3):  # query and claim; the to-device step comes back unsent
        requests = alice.machine.share_room_key(ROOM, members)
        alice.persist()
        if all(r.kind is RequestKind.TO_DEVICE for r in requests):
            break
        for request in requests:
            alice.answer(request)
    saved = [r.id for r in requests]
    assert saved
    alice.restart()
    again = alice.machine.share_room_key(ROOM, members)
    assert [r.id for r in again] == saved
    for request in again:
        alice.answer(request)
    event = server.post_event(ROOM, alice.user_id,
                              alice.machine.encrypt(ROOM, "m.room.message", {"body": "x"}))
    bob.tick()
    assert bob.read(ROOM, event) == "x"
