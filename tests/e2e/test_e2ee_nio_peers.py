"""The real E2EE peer of the e2e tier proves itself: two matrix-nio devices talk in an encrypted
room through Synapse directly (no proxy), both ways, and the server only ever holds ciphertext."""

from __future__ import annotations

import pytest

from tests.support.nio_peer import PeerFactory
from tests.support.synapse import SynapseServer
from tests.support.wire import MEGOLM, assert_ciphertext_only

pytestmark = pytest.mark.e2e


async def test_two_nio_peers_talk_encrypted(
    synapse: SynapseServer, nio_peers: PeerFactory, localpart: str
) -> None:
    alice = await nio_peers(f"{localpart}alice")
    bob = await nio_peers(f"{localpart}bob")

    # Each peer's device keys are on the server, signed, and readable by the other one.
    assert bob.device_id in await alice.query_devices(bob.user_id)
    assert alice.device_id in await bob.query_devices(alice.user_id)

    room_id = await alice.create_encrypted_room(invite=[bob.user_id], name="nio to nio")
    await bob.join(room_id)
    await alice.wait_for_member(room_id, bob.user_id)

    hello = await alice.send_text(room_id, "hello bob ✓")
    [seen] = await bob.wait_for_bodies(room_id, ["hello bob ✓"])
    assert (seen.event_id, seen.sender, seen.encrypted) == (hello, alice.user_id, True)

    reply = await bob.send_text(room_id, "hi alice 🙂")
    [back] = await alice.wait_for_bodies(room_id, ["hi alice 🙂"])
    assert (back.event_id, back.sender, back.encrypted) == (reply, bob.user_id, True)

    # A reaction, encrypted by the peer (nio's own room_send would leave it in the clear),
    # with its relation in the cleartext content.
    relation = {"rel_type": "m.annotation", "event_id": reply, "key": "👍"}
    reaction = await alice.send(room_id, "m.reaction", {"m.relates_to": relation})
    seen_reaction = await bob.wait_for_event(room_id, reaction)
    assert seen_reaction.type == "m.reaction"
    assert seen_reaction.encrypted
    assert seen_reaction.content["m.relates_to"] == relation

    assert bob.undecryptable(room_id) == []
    assert alice.undecryptable(room_id) == []
    # No peer ever saw a message of this room in the clear.
    assert all(m.encrypted for m in alice.messages(room_id) + bob.messages(room_id))

    # A member who joins later has no key for what was said before: the peer reports those
    # events as undecryptable instead of dropping them, and reads what comes after.
    carol = await nio_peers(f"{localpart}carol")
    await alice.invite(room_id, carol.user_id)
    await carol.join(room_id)
    await carol.sync_until(lambda: len(carol.undecryptable(room_id)) == 3, what="3 old events")
    assert {e.event_id for e in carol.undecryptable(room_id)} == {hello, reply, reaction}
    await alice.wait_for_member(room_id, carol.user_id)
    later = await alice.send_text(room_id, "welcome carol")
    [welcome] = await carol.wait_for_bodies(room_id, ["welcome carol"])
    assert welcome.event_id == later
    assert carol.bodies(room_id) == ["welcome carol"]

    raw = await synapse.room_messages(bob.access_token, room_id)
    encrypted = assert_ciphertext_only(raw)
    assert [e["event_id"] for e in encrypted] == [later, reaction, reply, hello]
    assert raw_relation(encrypted[1]) == relation
    assert all(e["content"]["algorithm"] == MEGOLM for e in encrypted)


def raw_relation(event: dict[str, object]) -> object:
    content = event["content"]
    assert isinstance(content, dict)
    return content.get("m.relates_to")
