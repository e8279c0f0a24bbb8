"""Decrypted files stay where they were (#16, item 2): only the real media fields of the event
types that carry media are rewritten, only for files the sending account decrypted itself,
and a plaintext copy goes only into a room known to be unencrypted."""

from __future__ import annotations

import base64
import hashlib
import os
from urllib.parse import quote

import aiohttp

from tests.integration.conftest import StartE2EEProxy
from tests.support.plain_client import (
    V3,
    MediaAnswer,
    PlainClient,
    encrypted_room_of,
    get_media,
    login_all,
    stub_media,
    upload_media,
)
from tests.support.stub_homeserver import StubHomeserver

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(2000)


def plaintext_on_stub(stub: StubHomeserver) -> bool:
    return any(item.content == PNG for item in stub.media.items.values())


def uploads(stub: StubHomeserver, before: int) -> list[str]:
    return [r.path for r in stub.requests[before:] if "/upload" in r.path]


async def shared_image(alice: PlainClient, bob: PlainClient) -> str:
    """Alice sends an image into an encrypted room; Bob's proxy decrypts it: the URI his
    account knows a key for."""
    room_id = await encrypted_room_of(alice, bob)
    url = await upload_media(alice, PNG, "image/png", filename="private.png")
    event_id = await alice.send(room_id, {"msgtype": "m.image", "body": "x.png", "url": url})
    received = await bob.wait_for_event(room_id, event_id)
    assert received["content"]["url"] == url and "file" in received["content"]
    return url


async def test_a_string_that_looks_like_media_is_only_text(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """A `body`, a topic or a custom field equal to a file's URI was taken for a reference:
    the file went up decrypted into an unencrypted room."""
    proxy = await start_e2ee_proxy()
    alice, bob, carol = await login_all(session, proxy.url, stub, "alice", "bob", "carol")
    url = await shared_image(alice, bob)
    plain_room = await bob.create_room(invite=[carol.user_id])
    before = len(stub.requests)
    for content in (
        {"msgtype": "m.text", "body": url},
        {"msgtype": "m.text", "body": "see", "org.example.ref": {"url": url}},
    ):
        event_id = await bob.send(plain_room, content)
        [stored] = [e for e in stub.raw_events(plain_room) if e.get("event_id") == event_id]
        assert stored["content"] == content
    topic = f"{V3}/rooms/{quote(plain_room, safe='')}/state/m.room.topic/"
    await bob.call("PUT", topic, {"topic": url})
    # Carol never decrypted it: her "image" is hers to send as it is.
    await carol.join(plain_room)
    image = {"msgtype": "m.image", "body": "x.png", "url": url}
    event_id = await carol.send(plain_room, image)
    [stored] = [e for e in stub.raw_events(plain_room) if e.get("event_id") == event_id]
    assert stored["content"] == image
    assert uploads(stub, before) == []
    assert not plaintext_on_stub(stub)


async def test_a_decrypted_file_goes_nowhere_not_known_to_be_unencrypted(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """A state event of an encrypted room, a new room (the server may encrypt it by default)
    and a profile are not rooms known to be unencrypted: no plaintext copy, nothing sent."""
    proxy = await start_e2ee_proxy()
    alice, bob = await login_all(session, proxy.url, stub, "alice", "bob")
    url = await shared_image(alice, bob)
    secret_room = await encrypted_room_of(bob, alice)
    before = len(stub.requests)
    avatar = {"url": url, "info": {"mimetype": "image/png"}}
    for method, path, body in (
        ("PUT", f"{V3}/rooms/{quote(secret_room, safe='')}/state/m.room.avatar/", avatar),
        ("POST", f"{V3}/createRoom", {"initial_state": [
            {"type": "m.room.avatar", "state_key": "", "content": avatar},
        ]}),
        ("PUT", f"{V3}/profile/{quote(bob.user_id)}/avatar_url", {"avatar_url": url}),
    ):
        status, answer = await bob.request(method, path, body)
        assert (status, answer["errcode"]) == (403, "M_FORBIDDEN"), (path, answer)
    assert uploads(stub, before) == []
    assert not plaintext_on_stub(stub)
    assert [e for e in stub.raw_events(secret_room) if e["type"] == "m.room.avatar"] == []
    sent = [r.path for r in stub.requests[before:]]
    assert [p for p in sent if p.endswith(("/createRoom", "/avatar_url"))] == []

    # Its own fresh upload is the client's to publish: a room avatar goes up in plaintext.
    fresh = await upload_media(bob, PNG[:500], "image/png")
    state = f"{V3}/rooms/{quote(secret_room, safe='')}/state/m.room.avatar/"
    await bob.call("PUT", state, {"url": fresh})
    [event] = [e for e in stub.raw_events(secret_room) if e["type"] == "m.room.avatar"]
    assert event["content"]["url"] == fresh


def b64(data: bytes, urlsafe: bool = False) -> str:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encode(data).decode().rstrip("=")


async def test_a_second_sender_cannot_replace_a_files_key(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """Mallory, in the room, names Alice's file with a key of her own (and the hash of the real
    ciphertext, so the check passes): Bob's downloads must keep decrypting with Alice's key."""
    proxy = await start_e2ee_proxy()
    alice, bob, mallory = await login_all(session, proxy.url, stub, "alice", "bob", "mallory")
    room_id = await encrypted_room_of(alice, bob, mallory)
    url = await upload_media(alice, PNG, "image/png")
    event_id = await alice.send(room_id, {"msgtype": "m.image", "body": "x.png", "url": url})
    await bob.wait_for_event(room_id, event_id)
    assert_served(await get_media(bob, url), PNG)

    ciphertext = stub_media(stub, url).content
    assert ciphertext is not None
    forged = {
        "v": "v2", "url": url, "iv": b64(os.urandom(8) + bytes(8)),
        "key": {"kty": "oct", "alg": "A256CTR", "ext": True, "key_ops": ["encrypt", "decrypt"],
                "k": b64(os.urandom(32), urlsafe=True)},
        "hashes": {"sha256": b64(hashlib.sha256(ciphertext).digest())},
    }
    fake = await mallory.send(room_id, {"msgtype": "m.image", "body": "y.png", "file": forged})
    assert (await bob.wait_for_event(room_id, fake))["content"]["file"]["url"] == url
    assert_served(await get_media(bob, url), PNG)


def assert_served(answer: MediaAnswer, data: bytes) -> None:
    assert (answer.status, answer.body) == (200, data), answer


async def test_a_held_upload_is_not_served_to_a_token_logged_out_elsewhere(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """A held upload is answered by the proxy alone; its cached token answer kept serving it for
    ten minutes after the token was logged out around the proxy."""
    proxy = await start_e2ee_proxy()
    (alice,) = await login_all(session, proxy.url, stub, "alice")
    url = await upload_media(alice, PNG, "image/png")
    assert_served(await get_media(alice, url), PNG)
    around = PlainClient(session, str(stub.base_url), alice.access_token)
    await around.logout()
    for api in ("v1", "v3"):
        answer = await get_media(alice, url, api=api)
        assert (answer.status, answer.errcode) == (401, "M_UNKNOWN_TOKEN"), answer
