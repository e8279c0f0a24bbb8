"""The proxy against the reference implementation: matrix-js-sdk with matrix-sdk-crypto (wasm),
the crypto stack of Element Web, as a real peer on the same real Synapse.

A plain client (no crypto) talks through e2eproxy; the js peer talks to Synapse directly. Each
scenario goes both ways where it applies, checks that the js peer's own crypto trusts the
proxy's messages as coming from the proxy's device (no sender mismatch, no unknown device), and
reads the raw history on Synapse to check it holds only ciphertext. rust-sdk is stricter than
matrix-nio: a room key it cannot parse is dropped whole, which is what these tests would show.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.interop.conftest import JsPeers, PlainLogin
from tests.support.js_peer import (
    READ_DEADLINE,
    JsEvent,
    JsPeer,
    js_room_with_plain,
    plain_reads,
)
from tests.support.plain_client import PlainClient, get_media, upload_media
from tests.support.synapse import SynapseServer
from tests.support.wire import assert_ciphertext_only

pytestmark = [pytest.mark.e2e, pytest.mark.interop]

# Shields that would mean the js peer cannot tie the message to the proxy's device.
BAD_SHIELDS = {"MISMATCHED_SENDER", "MISMATCHED_SENDER_KEY", "UNKNOWN_DEVICE",
               "AUTHENTICITY_NOT_GUARANTEED", "UNKNOWN"}


def trusted_as_proxy_device(event: JsEvent, plain: PlainClient, body: str) -> None:
    """What the js peer's crypto says of a message the proxy encrypted."""
    assert event.decryption_failure is None, event
    assert event.encrypted and event.wire_type == "m.room.encrypted", event
    assert (event.type, event.body, event.sender) == ("m.room.message", body, plain.user_id)
    assert event.sender_device == plain.device_id, event
    assert event.shield is not None, event
    assert event.shield["reason"] not in BAD_SHIELDS, event.shield


async def plain_room_with_js(plain: PlainClient, js: JsPeer, **encryption: Any) -> str:
    room_id = await plain.create_encrypted_room(invite=[js.user_id], **encryption)
    await js.join(room_id)
    return room_id


async def raw_history(synapse: SynapseServer, token: str, room_id: str) -> list[dict[str, Any]]:
    return await synapse.room_messages(token, room_id)


# -- a room the js peer made ------------------------------------------------------------------


async def test_js_peer_room_both_ways_and_history(
    synapse: SynapseServer, js_peers: JsPeers, plain_login: PlainLogin, localpart: str
) -> None:
    js = await js_peers.user(f"{localpart}js")
    plain = await plain_login(f"{localpart}plain")
    room_id = await js_room_with_plain(js, plain)

    from_js = await js.send_text(room_id, "hello from rust-sdk ✓")
    await plain_reads(plain, room_id, from_js, "hello from rust-sdk ✓", js)

    from_plain = await plain.send_text(room_id, "hello from behind the proxy 🙂")
    seen = await js.wait_for_text(room_id, from_plain, "hello from behind the proxy 🙂")
    trusted_as_proxy_device(seen, plain, "hello from behind the proxy 🙂")

    # History, read back by /messages on each side.
    history = await plain.messages(room_id)
    by_id = {e["event_id"]: e for e in history}
    for event_id, body in ((from_js, "hello from rust-sdk ✓"),
                           (from_plain, "hello from behind the proxy 🙂")):
        assert by_id[event_id]["type"] == "m.room.message", by_id[event_id]
        assert by_id[event_id]["content"]["body"] == body
    js_history = {e.event_id: e for e in await js.messages(room_id)}
    trusted_as_proxy_device(js_history[from_plain], plain, "hello from behind the proxy 🙂")
    assert js_history[from_js].body == "hello from rust-sdk ✓"

    encrypted = assert_ciphertext_only(await raw_history(synapse, js.access_token, room_id))
    assert {e["event_id"] for e in encrypted} == {from_js, from_plain}


# -- a room the plain client made -------------------------------------------------------------


async def test_plain_client_room_both_ways_with_a_reply(
    synapse: SynapseServer, js_peers: JsPeers, plain_login: PlainLogin, localpart: str
) -> None:
    js = await js_peers.user(f"{localpart}js")
    plain = await plain_login(f"{localpart}plain")
    room_id = await plain_room_with_js(plain, js)

    # No sync by the plain client since it made the room: the proxy finds the js device itself.
    first = await plain.send_text(room_id, "first, from the room's creator")
    seen = await js.wait_for_text(room_id, first, "first, from the room's creator")
    trusted_as_proxy_device(seen, plain, "first, from the room's creator")

    relation = {"m.in_reply_to": {"event_id": first}}
    reply = await js.send(room_id, "m.room.message",
                          {"msgtype": "m.text", "body": "a reply", "m.relates_to": relation})
    got = await plain_reads(plain, room_id, reply, "a reply", js)
    assert got["content"]["m.relates_to"] == relation

    encrypted = assert_ciphertext_only(await raw_history(synapse, js.access_token, room_id))
    assert {e["event_id"] for e in encrypted} == {first, reply}


# -- the js user adds a device ----------------------------------------------------------------


async def test_second_device_of_the_js_user(
    synapse: SynapseServer, js_peers: JsPeers, plain_login: PlainLogin, localpart: str
) -> None:
    js = await js_peers.user(f"{localpart}js")
    plain = await plain_login(f"{localpart}plain")
    room_id = await plain_room_with_js(plain, js)
    before = await plain.send_text(room_id, "before the new device")
    await js.wait_for_text(room_id, before, "before the new device")

    await plain.sync()  # a position from before the new device (an initial sync lists none)
    seen_syncs = len(plain.sync_bodies)
    second = await js_peers.device(js)
    assert second.device_id != js.device_id
    await second.wait_for_member(room_id, plain.user_id)

    # The proxy learns of the new device from the device list change in a sync (as any client
    # does: a device that appears after the message was sent gets no key), and shares the key
    # with it: both devices must read the next message.
    await plain.sync_until(lambda: any(
        js.user_id in body.get("device_lists", {}).get("changed", [])
        for body in plain.sync_bodies[seen_syncs:]
    ), "the js user's device list change", deadline_s=READ_DEADLINE)
    after = await plain.send_text(room_id, "after the new device")
    for device in (js, second):
        seen = await device.wait_for_text(room_id, after, "after the new device")
        trusted_as_proxy_device(seen, plain, "after the new device")

    from_second = await second.send_text(room_id, "from the second device")
    await plain_reads(plain, room_id, from_second, "from the second device", second)

    assert_ciphertext_only(await raw_history(synapse, js.access_token, room_id))


# -- rotation ---------------------------------------------------------------------------------


async def test_megolm_rotation_both_ways(
    synapse: SynapseServer, js_peers: JsPeers, plain_login: PlainLogin, localpart: str
) -> None:
    js = await js_peers.user(f"{localpart}js")
    plain = await plain_login(f"{localpart}plain")

    # The proxy rotates in the plain client's room every 2 messages.
    room_id = await plain_room_with_js(plain, js, rotation_period_msgs=2)
    sent = [await plain.send_text(room_id, f"proxy {i}") for i in range(5)]
    seen = [await js.wait_for_text(room_id, e, f"proxy {i}") for i, e in enumerate(sent)]
    for i, event in enumerate(seen):
        trusted_as_proxy_device(event, plain, f"proxy {i}")
    assert len({e.session_id for e in seen}) == 3, [e.session_id for e in seen]

    # rust-sdk rotates in its own room every 2 messages; the proxy reads every session.
    js_room = await js_room_with_plain(js, plain, rotation_period_msgs=2)
    from_js = [await js.send_text(js_room, f"rust {i}") for i in range(5)]
    for i, event_id in enumerate(from_js):
        await plain_reads(plain, js_room, event_id, f"rust {i}", js)
    raw = assert_ciphertext_only(await raw_history(synapse, js.access_token, js_room))
    assert len({e["content"]["session_id"] for e in raw}) == 3

    assert_ciphertext_only(await raw_history(synapse, js.access_token, room_id))


# -- attachments ------------------------------------------------------------------------------


async def test_attachments_each_way(
    synapse: SynapseServer, js_peers: JsPeers, plain_login: PlainLogin, localpart: str
) -> None:
    js = await js_peers.user(f"{localpart}js")
    plain = await plain_login(f"{localpart}plain")
    room_id = await plain_room_with_js(plain, js)

    # Plain -> js: the proxy encrypts the upload when the event names it.
    data = uuid.uuid4().bytes * 4096  # 64 KiB
    mxc = await upload_media(plain, data, "application/octet-stream", "report.bin")
    sent = await plain.send(room_id, {"msgtype": "m.file", "body": "report.bin", "url": mxc,
                                      "info": {"mimetype": "application/octet-stream",
                                               "size": len(data)}})
    seen = await js.wait_for_event(room_id, event_id=sent)
    assert seen.decryption_failure is None, seen
    file = seen.content["file"]
    assert "url" not in seen.content, seen.content
    assert await js.download_file(file) == data
    raw_answer = await get_media(plain, file["url"], base_url=synapse.base_url)
    assert raw_answer.status == 200 and data[:64] not in raw_answer.body

    # Js -> plain: Element's attachment encryption; the proxy decrypts the download.
    picture = b"\x89PNG\r\n\x1a\n" + uuid.uuid4().bytes * 1000
    js_file = await js.upload_file(picture, "image/png", "cat.png")
    from_js = await js.send(room_id, "m.room.message", {
        "msgtype": "m.image", "body": "cat.png", "file": js_file,
        "info": {"mimetype": "image/png", "size": len(picture)},
    })
    got = await plain.wait_for_event(room_id, from_js, deadline_s=READ_DEADLINE)
    assert got["type"] == "m.room.message" and got["content"]["msgtype"] == "m.image", got
    downloaded = await get_media(plain, got["content"]["url"])
    assert downloaded.status == 200, downloaded
    assert downloaded.body == picture

    assert_ciphertext_only(await raw_history(synapse, js.access_token, room_id))
