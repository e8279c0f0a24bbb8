"""Transparent E2EE through the proxy, against a real Synapse and a real independent E2EE client.

Plain clients (bare aiohttp, no crypto) log in and talk through e2eproxy; matrix-nio peers (their
own vodozemac crypto, logged in against Synapse directly) sit on the other side. Every test reads
the room history straight from Synapse and asserts that the messages there are only ciphertext.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest

from tests.support.e2e_clients import decrypted_message, plain_login, plain_with_peer_room, show
from tests.support.nio_peer import PeerFactory
from tests.support.synapse import SynapseServer
from tests.support.wire import MEGOLM, assert_ciphertext_only, megolm_message_index

pytestmark = pytest.mark.e2e

# -- (a) the plain client creates the room, the nio peer joins --------------------------------


async def test_plain_creates_room_and_talks_with_nio_peer(
    session: aiohttp.ClientSession,
    proxy_url: str,
    synapse: SynapseServer,
    nio_peers: PeerFactory,
    localpart: str,
) -> None:
    plain = await plain_login(session, proxy_url, synapse, f"{localpart}plain")
    peer = await nio_peers(f"{localpart}nio")

    # The login through the proxy gave the client's own device signed device keys on the
    # server (nio drops a device whose self-signature does not verify), and no other device.
    devices = await peer.query_devices(plain.user_id)
    assert set(devices) == {plain.device_id}, f"devices with keys: {sorted(devices)}"
    device_keys = devices[plain.device_id].keys

    room_id = await plain.create_encrypted_room(invite=[peer.user_id], name="plain creates")
    await peer.join(room_id)

    # No sync by the plain client since it created the room: the proxy must still find the
    # peer's device (the server lists it as joined) and share the room key before sending.
    txn = f"first-{uuid.uuid4().hex}"
    sent = await plain.send_text(room_id, "hello from behind the proxy ✓", txn)
    [seen] = await peer.wait_for_bodies(room_id, ["hello from behind the proxy ✓"])
    assert (seen.event_id, seen.sender, seen.encrypted) == (sent, plain.user_id, True)

    reply = await peer.send_text(room_id, "hello plain client 🙂")
    got = await plain.wait_for_event(room_id, reply)
    decrypted_message(got, "hello plain client 🙂", peer.user_id)
    assert got["event_id"] == reply
    # The client's own message comes back decrypted too, with its transaction id.
    await plain.sync_until(lambda: plain.event(room_id, sent) is not None, "own message")
    own = plain.event(room_id, sent)
    decrypted_message(own, "hello from behind the proxy ✓", plain.user_id)
    assert own is not None and own.get("unsigned", {}).get("transaction_id") == txn, own
    # Nothing encrypted reaches the plain client: not in the timeline, not as to-device.
    timeline_types = {e["type"] for e in plain.timeline[room_id]}
    assert "m.room.encrypted" not in timeline_types, plain.timeline[room_id]
    assert not [e for e in plain.to_device if e["type"] == "m.room.encrypted"], plain.to_device

    history = await plain.client.messages(room_id)
    messages = [e for e in history if e["type"] in ("m.room.message", "m.room.encrypted")]
    assert [(e["type"], e["event_id"]) for e in messages] == [
        ("m.room.message", reply),
        ("m.room.message", sent),
    ], show(messages)
    assert [e["content"]["body"] for e in messages] == [
        "hello plain client 🙂",
        "hello from behind the proxy ✓",
    ]

    raw = await synapse.room_messages(peer.access_token, room_id)
    assert [e["event_id"] for e in assert_ciphertext_only(raw)] == [reply, sent]
    assert peer.undecryptable(room_id) == []
    # Still the same one device with the same keys: no key replacement, no second device.
    devices = await peer.query_devices(plain.user_id)
    assert set(devices) == {plain.device_id}
    assert devices[plain.device_id].keys == device_keys


async def test_event_and_context_are_decrypted(
    session: aiohttp.ClientSession,
    proxy_url: str,
    synapse: SynapseServer,
    nio_peers: PeerFactory,
    localpart: str,
) -> None:
    plain, peer, room_id = await plain_with_peer_room(
        session, proxy_url, synapse, nio_peers, localpart
    )
    first = await peer.send_text(room_id, "one")
    second = await peer.send_text(room_id, "two")

    event = await plain.client.call("GET", plain.room_path(room_id, f"event/{second}"))
    decrypted_message(event, "two", peer.user_id)
    assert event["event_id"] == second

    context = await plain.client.call(
        "GET", plain.room_path(room_id, f"context/{second}"), params={"limit": "10"}
    )
    decrypted_message(context["event"], "two", peer.user_id)
    before = [e for e in context["events_before"] if e["event_id"] == first]
    assert len(before) == 1, context["events_before"]
    decrypted_message(before[0], "one", peer.user_id)
    assert not [e for e in context["events_before"] if e["type"] == "m.room.encrypted"]

    raw = await synapse.room_messages(peer.access_token, room_id)
    assert [e["event_id"] for e in assert_ciphertext_only(raw)] == [second, first]


# -- (b) the nio peer creates the room and invites the plain user -----------------------------


async def test_nio_peer_creates_room_and_talks_with_plain_client(
    session: aiohttp.ClientSession,
    proxy_url: str,
    synapse: SynapseServer,
    nio_peers: PeerFactory,
    localpart: str,
) -> None:
    peer = await nio_peers(f"{localpart}nio")
    plain = await plain_login(session, proxy_url, synapse, f"{localpart}plain")
    room_id = await peer.create_encrypted_room(invite=[plain.user_id], name="nio creates")

    await plain.join_when_invited(room_id)
    # Sent right after the join, before any sync showed the proxy the room as joined or its
    # members (the invite carried only stripped state): it has to ask the server who is in.
    sent = await plain.send_text(room_id, "joined and writing at once")
    [seen] = await peer.wait_for_bodies(room_id, ["joined and writing at once"])
    assert (seen.event_id, seen.sender, seen.encrypted) == (sent, plain.user_id, True)

    first = await peer.send_text(room_id, "welcome, plain client")
    second = await peer.send_text(room_id, "second message")
    decrypted_message(
        await plain.wait_for_event(room_id, first), "welcome, plain client", peer.user_id
    )
    decrypted_message(await plain.wait_for_event(room_id, second), "second message", peer.user_id)

    history = await plain.client.messages(room_id)
    messages = [e for e in history if e["type"] in ("m.room.message", "m.room.encrypted")]
    assert [(e["type"], e["event_id"]) for e in messages] == [
        ("m.room.message", second),
        ("m.room.message", first),
        ("m.room.message", sent),
    ], show(messages)

    raw = await synapse.room_messages(peer.access_token, room_id)
    assert [e["event_id"] for e in assert_ciphertext_only(raw)] == [second, first, sent]
    assert peer.undecryptable(room_id) == []


# -- (c) two plain clients, both behind the same proxy ------------------------------------------


async def test_two_plain_clients_behind_the_proxy(
    session: aiohttp.ClientSession, proxy_url: str, synapse: SynapseServer, localpart: str
) -> None:
    alice = await plain_login(session, proxy_url, synapse, f"{localpart}alice")
    bob = await plain_login(session, proxy_url, synapse, f"{localpart}bob")
    room_id = await alice.create_encrypted_room(name="two plain clients")
    await alice.client.invite(room_id, bob.user_id)
    await bob.join_when_invited(room_id)

    hello = await alice.send_text(room_id, "hi bob, encrypted by the proxy")
    decrypted_message(
        await bob.wait_for_event(room_id, hello), "hi bob, encrypted by the proxy", alice.user_id
    )
    back = await bob.send_text(room_id, "hi alice, same proxy")
    decrypted_message(
        await alice.wait_for_event(room_id, back), "hi alice, same proxy", bob.user_id
    )
    more = await alice.send_text(room_id, "and once more")
    decrypted_message(await bob.wait_for_event(room_id, more), "and once more", alice.user_id)

    for client in (alice, bob):
        history = await client.client.messages(room_id)
        messages = [e for e in history if e["type"] in ("m.room.message", "m.room.encrypted")]
        assert [(e["type"], e["event_id"]) for e in messages] == [
            ("m.room.message", more),
            ("m.room.message", back),
            ("m.room.message", hello),
        ], show(messages)
        assert not [e for e in client.to_device if e["type"] == "m.room.encrypted"]

    assert bob.client.access_token is not None
    raw = await synapse.room_messages(bob.client.access_token, room_id)
    assert [e["event_id"] for e in assert_ciphertext_only(raw)] == [more, back, hello]


# -- (d) reactions, edits, replies and threads are encrypted, relations stay in the clear -----


async def test_relations_are_encrypted_with_cleartext_relates_to(
    session: aiohttp.ClientSession,
    proxy_url: str,
    synapse: SynapseServer,
    nio_peers: PeerFactory,
    localpart: str,
) -> None:
    plain, peer, room_id = await plain_with_peer_room(
        session, proxy_url, synapse, nio_peers, localpart
    )
    original = await plain.send_text(room_id, "original text")
    from_peer = await peer.send_text(room_id, "something to react to")
    await plain.wait_for_event(room_id, from_peer)

    relations: dict[str, tuple[str, dict[str, Any]]] = {
        "reaction": (
            "m.reaction",
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": from_peer, "key": "👍"}},
        ),
        "edit": (
            "m.room.message",
            {
                "msgtype": "m.text",
                "body": "* edited text",
                "m.new_content": {"msgtype": "m.text", "body": "edited text"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": original},
            },
        ),
        "reply": (
            "m.room.message",
            {
                "msgtype": "m.text",
                "body": "> something to react to\n\na reply",
                "m.relates_to": {"m.in_reply_to": {"event_id": from_peer}},
            },
        ),
        "thread": (
            "m.room.message",
            {
                "msgtype": "m.text",
                "body": "in a thread",
                "m.relates_to": {
                    "rel_type": "m.thread",
                    "event_id": original,
                    "is_falling_back": True,
                    "m.in_reply_to": {"event_id": original},
                },
            },
        ),
    }
    sent = {
        name: await plain.send(room_id, event_type, content)
        for name, (event_type, content) in relations.items()
    }

    # The nio peer decrypts each one to what the plain client wrote.
    for name, event_id in sent.items():
        event_type, content = relations[name]
        seen = await peer.wait_for_event(room_id, event_id)
        assert seen.encrypted, f"{name} reached the nio peer in the clear"
        assert seen.type == event_type, (name, seen)
        assert seen.content["m.relates_to"] == content["m.relates_to"], (name, seen)
        for key in ("body", "m.new_content"):
            assert seen.content.get(key) == content.get(key), (name, key, seen)

    # On the server: ciphertext only, with the relation in the clear beside it (so that the
    # server can aggregate reactions, edits and threads).
    raw = await synapse.room_messages(peer.access_token, room_id)
    by_id = {e["event_id"]: e for e in assert_ciphertext_only(raw)}
    for name, event_id in sent.items():
        assert event_id in by_id, f"{name} is not an encrypted event on the server"
        relates_to = by_id[event_id]["content"].get("m.relates_to")
        assert relates_to == relations[name][1]["m.relates_to"], (name, by_id[event_id])

    # Server-side aggregation through the proxy, decrypted.
    answer = await plain.client.call(
        "GET", plain.room_path(room_id, f"relations/{from_peer}/m.annotation", "v1")
    )
    [reaction] = answer["chunk"]
    assert reaction["event_id"] == sent["reaction"]
    assert reaction["type"] == "m.reaction", show(reaction)
    assert reaction["content"]["m.relates_to"]["key"] == "👍"
    answer = await plain.client.call(
        "GET", plain.room_path(room_id, f"relations/{original}", "v1")
    )
    related = {e["event_id"]: e for e in answer["chunk"]}
    assert set(related) == {sent["edit"], sent["thread"]}, answer["chunk"]
    assert related[sent["edit"]]["type"] == "m.room.message", show(related[sent["edit"]])
    assert related[sent["edit"]]["content"]["m.new_content"]["body"] == "edited text"
    assert related[sent["thread"]]["content"]["body"] == "in a thread"


# -- (e) a retried transaction is one event, encrypted once ----------------------------------


async def test_retried_txn_is_one_event_encrypted_once(
    session: aiohttp.ClientSession,
    proxy_url: str,
    synapse: SynapseServer,
    nio_peers: PeerFactory,
    localpart: str,
) -> None:
    plain, peer, room_id = await plain_with_peer_room(
        session, proxy_url, synapse, nio_peers, localpart
    )
    txn = f"retry-{uuid.uuid4().hex}"
    first = await plain.send_text(room_id, "sent twice, stored once", txn)
    again = await plain.send_text(room_id, "sent twice, stored once", txn)
    assert again == first
    after = await plain.send_text(room_id, "the next message")

    await peer.wait_for_bodies(room_id, ["sent twice, stored once", "the next message"])
    assert [m.event_id for m in peer.messages(room_id)] == [first, after]

    raw = await synapse.room_messages(peer.access_token, room_id)
    encrypted = assert_ciphertext_only(raw)
    assert [e["event_id"] for e in encrypted] == [after, first]
    # The retry did not encrypt a second time: the next message is the very next index of
    # the same Megolm session (a second encryption would have used up one in between).
    newer, older = (e["content"] for e in encrypted)
    assert newer["session_id"] == older["session_id"]
    indexes = [megolm_message_index(c["ciphertext"]) for c in (older, newer)]
    assert indexes[1] == indexes[0] + 1, f"message indexes {indexes}: the retry re-encrypted"


async def test_every_send_form_synapse_accepts_leaves_only_ciphertext(
    session: aiohttp.ClientSession,
    proxy_url: str,
    synapse: SynapseServer,
    nio_peers: PeerFactory,
    localpart: str,
) -> None:
    """Synapse takes a txn-less POST and the api/v1 and unstable prefixes too; through the proxy
    each is encrypted, and the peer reads them all."""
    plain, peer, room_id = await plain_with_peer_room(
        session, proxy_url, synapse, nio_peers, localpart
    )
    sent = []
    for method, version, tail in (
        ("POST", "v3", "send/m.room.message"),
        ("POST", "api/v1", "send/m.room.message"),
        ("PUT", "unstable", f"send/m.room.message/{uuid.uuid4().hex}"),
    ):
        body = f"{method} {version}"
        answer = await plain.client.call(
            method, plain.room_path(room_id, tail, version), {"msgtype": "m.text", "body": body}
        )
        sent.append((answer["event_id"], body))
    await peer.wait_for_bodies(room_id, [body for _, body in sent])
    raw = await synapse.room_messages(peer.access_token, room_id)
    encrypted = assert_ciphertext_only(raw)
    assert [e["event_id"] for e in encrypted] == [event_id for event_id, _ in reversed(sent)]


# -- (f) rotation_period_msgs from the room's encryption state ---------------------------------


async def test_rotation_period_msgs_gives_a_new_session_every_3_messages(
    session: aiohttp.ClientSession,
    proxy_url: str,
    synapse: SynapseServer,
    nio_peers: PeerFactory,
    localpart: str,
) -> None:
    plain, peer, room_id = await plain_with_peer_room(
        session, proxy_url, synapse, nio_peers, localpart, rotation_period_msgs=3
    )
    bodies = [f"rotating {n}" for n in range(7)]
    sent = [await plain.send_text(room_id, body) for body in bodies]

    raw = await synapse.room_messages(peer.access_token, room_id)
    encrypted = assert_ciphertext_only(raw)[::-1]  # oldest first
    assert [e["event_id"] for e in encrypted] == sent
    sessions = [e["content"]["session_id"] for e in encrypted]
    runs: list[tuple[str, int]] = []
    for session_id in sessions:
        if runs and runs[-1][0] == session_id:
            runs[-1] = (session_id, runs[-1][1] + 1)
        else:
            runs.append((session_id, 1))
    assert len({s for s, _ in runs}) == len(runs), f"an old session came back: {sessions}"
    assert len(runs) >= 3, f"{len(runs)} sessions for 7 messages: {sessions}"
    assert all(count <= 3 for _, count in runs), f"a session used past 3 messages: {runs}"
    assert all(e["content"]["algorithm"] == MEGOLM for e in encrypted)

    # The peer got every new session's key and reads all seven.
    seen = await peer.wait_for_bodies(room_id, bodies)
    assert [m.event_id for m in seen] == sent
    assert {m.session_id for m in seen} == set(sessions)
