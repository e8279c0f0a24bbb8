"""Encrypted attachments through the proxy, against the stub homeserver.

Uploads are held back (an id reserved with /media/v1/create, the bytes spooled) until an event
says where they go: into an encrypted room they go up as AES-256-CTR ciphertext (`file`,
`info.thumbnail_file`), anywhere else once in plaintext. Downloads of encrypted media through the
proxy are hash-checked and served decrypted, per user. The key material is checked with
matrix-nio's own attachment code, independent of the proxy's.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nio.crypto.attachments import decrypt_attachment

from e2eproxy.config import EncryptionConfig
from e2eproxy.proxy.app_keys import MEDIA, REGISTRY
from tests.integration.conftest import RunningProxy, StartE2EEProxy, proxied
from tests.support.background import client_made
from tests.support.plain_client import (
    NO_WAIT,
    MediaAnswer,
    PlainClient,
    direct,
    encrypted_room_of,
    get_media,
    stub_media,
    upload_media,
)
from tests.support.stub_homeserver import StubHomeserver
from tests.support.wire import assert_ciphertext_only, raw_messages

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)
THUMB = b"\x89PNG\r\n\x1a\n" + os.urandom(700)


def spool_files(proxy: RunningProxy) -> list[Path]:
    app = proxy.server.app
    assert app is not None
    return sorted(app[MEDIA].spool.directory.iterdir())


def b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def urlsafe_b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_encrypted_file(file: dict[str, Any], stored: bytes, plaintext: bytes) -> None:
    """`file` is a spec EncryptedFile (v2, A256CTR JWK, IV low 64 bits zero) whose hash is that
    of the bytes the server stores, and which nio's own code decrypts to `plaintext`."""
    assert file["v"] == "v2", file
    key = file["key"]
    assert key["kty"] == "oct" and key["alg"] == "A256CTR", key
    assert {"encrypt", "decrypt"} <= set(key["key_ops"]), key
    assert key["ext"] is True, key
    assert len(urlsafe_b64decode(key["k"])) == 32, key
    iv = b64decode(file["iv"])
    assert len(iv) == 16 and iv[8:] == bytes(8), f"IV low 64 bits not zero: {iv.hex()}"
    assert b64decode(file["hashes"]["sha256"]) == hashlib.sha256(stored).digest()
    assert decrypt_attachment(stored, key["k"], file["hashes"]["sha256"], file["iv"]) == plaintext


def assert_served(answer: MediaAnswer, plaintext: bytes, content_type: str) -> None:
    assert answer.status == 200, answer
    assert answer.body == plaintext, answer
    assert answer.headers.get("Content-Type", "").split(";")[0] == content_type, answer.headers
    assert answer.headers.get("Content-Disposition"), answer.headers


def assert_not_plaintext(answer: MediaAnswer, *plaintexts: bytes) -> None:
    for plaintext in plaintexts:
        assert plaintext not in answer.body, f"plaintext served: {answer}"


async def send_image(
    sender: PlainClient, room_id: str, with_thumbnail: bool = True
) -> tuple[str, str, str | None]:
    """Upload PNG (and THUMB) through the proxy and send an m.image naming them."""
    url = await upload_media(sender, PNG, "image/png", filename="secret-photo.png")
    info: dict[str, Any] = {"mimetype": "image/png", "size": len(PNG), "w": 64, "h": 64}
    thumb = None
    if with_thumbnail:
        thumb = await upload_media(sender, THUMB, "image/png", filename="thumb-secret.png")
        info["thumbnail_url"] = thumb
        info["thumbnail_info"] = {"mimetype": "image/png", "size": len(THUMB)}
    content = {"msgtype": "m.image", "body": "secret-photo.png", "url": url, "info": info}
    event_id = await sender.send(room_id, content)
    return event_id, url, thumb


# -- before any event: the upload is held back -------------------------------------------------


async def test_upload_is_held_back_and_served_only_to_its_uploader(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    before = len(stub.requests)
    mxc = await upload_media(alice, PNG, "image/png", filename="held.png")

    # Reserved on the server, but nothing of the file went up.
    media = stub_media(stub, mxc)
    assert media.creator == alice.user_id
    assert media.content is None
    assert [
        r.path for r in stub.requests[before:]
        if "/media/" in r.path and not r.path.endswith("/config")  # (the size limit)
    ] == ["/_matrix/media/v1/create"]

    # Its uploader reads it back through the proxy, on both APIs.
    for api in ("v1", "v3", "r0"):
        answer = await get_media(alice, mxc, api=api)
        assert_served(answer, PNG, "image/png")
    assert stub_media(stub, mxc).content is None

    # Anyone else gets the server's own answer (the id has no content yet).
    for api in ("v1", "v3"):
        theirs = await get_media(bob, mxc, api=api, params=NO_WAIT)
        server = await get_media(direct(bob, stub), mxc, api=api, params=NO_WAIT)
        assert (theirs.status, theirs.errcode) == (server.status, server.errcode), theirs
        assert theirs.status != 200 and theirs.errcode == "M_NOT_YET_UPLOADED", theirs
        assert_not_plaintext(theirs, PNG)
    # And so does a request with no token at all.
    anonymous = await get_media(alice, mxc, api="v3", token=None, params=NO_WAIT)
    assert anonymous.status != 200 and anonymous.errcode == "M_NOT_YET_UPLOADED", anonymous


# -- encrypted rooms ---------------------------------------------------------------------------


async def test_image_with_thumbnail_into_an_encrypted_room(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    proxy, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    before = len(stub.requests)
    event_id, url, thumb = await send_image(alice, room_id)
    assert thumb is not None
    assert spool_files(proxy) == [], "the held copies outlive their upload"

    # The server holds ciphertext of the same length as each file, nothing else.
    stored_file = stub_media(stub, url).content
    stored_thumb = stub_media(stub, thumb).content
    assert stored_file is not None and stored_thumb is not None
    assert stored_file != PNG and len(stored_file) == len(PNG)
    assert stored_thumb != THUMB and len(stored_thumb) == len(THUMB)
    assert PNG[:8] not in stored_file

    # Each went up once, as octet-stream, with no filename.
    uploads = [r for r in stub.requests[before:] if r.path.startswith("/_matrix/media/v3/upload")]
    assert sorted(r.path.rsplit("/", 1)[1] for r in uploads) == sorted(
        m.rsplit("/", 1)[1] for m in (url, thumb)
    ), [r.path for r in uploads]
    for request in uploads:
        assert request.method == "PUT", request
        assert "filename" not in request.query, request
        assert request.headers.get("Content-Type") == "application/octet-stream", request
        assert "secret" not in request.raw_path, request

    # The room holds only Megolm ciphertext: no url, no filename in the clear.
    raw = raw_messages(stub.raw_events(room_id))
    assert [e["type"] for e in raw] == ["m.room.encrypted"], raw
    cleartext = json.dumps(raw)
    for leak in ("secret-photo", "thumb-secret", "thumbnail_url", '"url"', "image/png"):
        assert leak not in cleartext, leak

    # Bob (behind the proxy too) sees the decrypted event with file/thumbnail_file and urls.
    event = await bob.wait_for_event(room_id, event_id)
    assert event["type"] == "m.room.message", event
    content = event["content"]
    check_encrypted_file(content["file"], stored_file, PNG)
    check_encrypted_file(content["info"]["thumbnail_file"], stored_thumb, THUMB)
    assert content["file"]["url"] == url
    assert content["info"]["thumbnail_file"]["url"] == thumb
    keys = {content["file"]["key"]["k"], content["info"]["thumbnail_file"]["key"]["k"]}
    ivs = {content["file"]["iv"], content["info"]["thumbnail_file"]["iv"]}
    assert len(keys) == 2 and len(ivs) == 2, "file and thumbnail share a key or IV"
    assert content["url"] == url and content["info"]["thumbnail_url"] == thumb, content

    # Bob downloads the plaintext on every media API; the thumbnail of the image is its thumbnail.
    assert_served(await get_media(bob, url, api="v1"), PNG, "image/png")
    assert_served(await get_media(bob, url, api="v3"), PNG, "image/png")
    assert_served(await get_media(bob, url, api="r0"), PNG, "image/png")
    assert_served(await get_media(bob, url, api="v3", token="query"), PNG, "image/png")
    named = await get_media(bob, url, api="v1", filename="named.png")
    assert_served(named, PNG, "image/png")
    assert "named.png" in named.headers["Content-Disposition"], named.headers
    assert_served(await get_media(bob, thumb, api="v1"), THUMB, "image/png")
    sizes = {"width": "32", "height": "32", "method": "scale"}
    for api in ("v1", "v3"):
        thumbnail = await get_media(bob, url, "thumbnail", api, params=sizes)
        assert_served(thumbnail, THUMB, "image/png")
    # The sender reads its own files back the same way.
    assert_served(await get_media(alice, url, api="v1"), PNG, "image/png")
    assert_served(await get_media(alice, url, "thumbnail", "v3", params=sizes), THUMB, "image/png")
    assert spool_files(proxy) == [], "downloads leave their ciphertext in the spool"


@pytest.mark.parametrize("encrypted", [True, False])
async def test_clients_own_asynchronous_upload_is_held_too(
    stub: StubHomeserver,
    session: aiohttp.ClientSession,
    start_e2ee_proxy: StartE2EEProxy,
    encrypted: bool,
) -> None:
    """POST /create then PUT /upload/{server}/{id}: the file waits in the proxy as any upload
    does, then goes up encrypted into an encrypted room (never in plaintext) or plain."""
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    if encrypted:
        room_id = await encrypted_room_of(alice, bob)
    else:
        room_id = await alice.create_room(invite=[bob.user_id])
        await bob.join(room_id)
    reserved = await alice.call("POST", "/_matrix/media/v1/create", {})
    mxc = reserved["content_uri"]
    server_and_id = mxc.removeprefix("mxc://")
    headers = {"Authorization": f"Bearer {alice.access_token}", "Content-Type": "image/png"}
    async with session.put(
        f"{alice.base_url}/_matrix/media/v3/upload/{server_and_id}?filename=secret-photo.png",
        data=PNG,
        headers=headers,
    ) as response:
        assert response.status == 200 and await response.json() == {}
    assert stub_media(stub, mxc).content is None, "the file went up before any event"
    assert_served(await get_media(alice, mxc, api="v1"), PNG, "image/png")

    content = {"msgtype": "m.image", "body": "secret-photo.png", "url": mxc, "info": {}}
    event_id = await alice.send(room_id, content)
    stored = stub_media(stub, mxc).content
    event = await bob.wait_for_event(room_id, event_id)
    if encrypted:
        assert stored is not None and stored != PNG and PNG[:8] not in stored
        assert_ciphertext_only(stub.raw_events(room_id))
        check_encrypted_file(event["content"]["file"], stored, PNG)
    else:
        assert stored == PNG
        assert event["content"]["url"] == mxc
    assert_served(await get_media(bob, mxc, api="v1"), PNG, "image/png")


async def test_upload_over_the_servers_limit_is_refused_at_upload_time(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """The file waits in the proxy until it is sent: a size the server would refuse then is
    refused now, the way the server itself answers (413 M_TOO_LARGE), with or without a
    Content-Length, and nothing is reserved or kept."""
    proxy, (alice,) = await proxied(stub, session, start_e2ee_proxy, "alice")
    stub.media.max_upload_size = 1_000
    before = len(stub.requests)
    url = f"{alice.base_url}/_matrix/media/v3/upload"
    headers = {"Authorization": f"Bearer {alice.access_token}"}

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 400

    for body in (b"x" * 1_001, chunked()):
        async with session.post(url, data=body, headers=headers) as response:
            assert response.status == 413, await response.text()
            assert (await response.json())["errcode"] == "M_TOO_LARGE"
    assert spool_files(proxy) == []
    assert [r.path for r in stub.requests[before:] if r.path.endswith("/create")] == []
    assert await upload_media(alice, b"x" * 1_000)  # at the limit: fine


async def test_thumbnail_of_a_file_without_one_is_the_decrypted_file(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    data = b"%PDF-1.4 not really a pdf " + os.urandom(5000)
    url = await upload_media(alice, data, "application/pdf", filename="report.pdf")
    content = {
        "msgtype": "m.file",
        "body": "report.pdf",
        "url": url,
        "info": {"mimetype": "application/pdf", "size": len(data)},
    }
    event_id = await alice.send(room_id, content)
    stored = stub_media(stub, url).content
    assert stored is not None and stored != data and len(stored) == len(data)
    event = await bob.wait_for_event(room_id, event_id)
    check_encrypted_file(event["content"]["file"], stored, data)
    assert "thumbnail_file" not in event["content"]["info"]
    download = await get_media(bob, url, api="v1")
    assert_served(download, data, "application/pdf")
    assert download.headers["Content-Disposition"].startswith("attachment"), download.headers
    assert "report.pdf" in download.headers["Content-Disposition"], download.headers
    sizes = {"width": "96", "height": "96", "method": "crop"}
    for api in ("v1", "v3"):
        assert_served(
            await get_media(bob, url, "thumbnail", api, params=sizes), data, "application/pdf"
        )


async def test_tampered_or_truncated_ciphertext_is_never_served(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    event_id, url, thumb = await send_image(alice, room_id)
    assert thumb is not None
    await bob.wait_for_event(room_id, event_id)
    assert_served(await get_media(bob, url), PNG, "image/png")

    media = stub_media(stub, url)
    original = media.content
    flipped = bytearray(original)
    flipped[100] ^= 0x01
    media.content = bytes(flipped)
    for api in ("v1", "v3"):
        answer = await get_media(bob, url, api=api)
        assert answer.status >= 400, answer
        assert isinstance(answer.errcode, str), answer
        assert_not_plaintext(answer, PNG[8:200], PNG[200:400])

    media.content = original[:-16]
    answer = await get_media(bob, url)
    assert answer.status >= 400 and isinstance(answer.errcode, str), answer
    assert_not_plaintext(answer, PNG[8:200])

    thumb_media = stub_media(stub, thumb)
    thumb_media.content = bytes(len(THUMB))
    answer = await get_media(bob, url, "thumbnail", params={"width": "32", "height": "32"})
    assert answer.status >= 400 and isinstance(answer.errcode, str), answer

    media.content = original
    assert_served(await get_media(bob, url), PNG, "image/png")


async def test_encrypted_media_is_per_user_and_needs_a_token(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    _, (alice, bob, carol) = await proxied(
        stub, session, start_e2ee_proxy, "alice", "bob", "carol"
    )
    room_id = await encrypted_room_of(alice, bob)
    event_id, url, thumb = await send_image(alice, room_id)
    assert thumb is not None
    await bob.wait_for_event(room_id, event_id)
    stored = stub_media(stub, url).content
    assert stored is not None

    # Carol is behind the same proxy but not in the room: she gets what the server gives her.
    await carol.sync()
    for api, kind in (("v1", "download"), ("v3", "download"), ("v1", "thumbnail")):
        answer = await get_media(carol, url, kind, api)
        server = await get_media(direct(carol, stub), url, kind, api)
        assert_not_plaintext(answer, PNG[8:200], THUMB[8:200])
        assert (answer.status, answer.body) == (server.status, server.body), answer

    # No token: the server's answer (ciphertext on legacy, an error on authenticated media).
    for api in ("v1", "v3", "r0"):
        answer = await get_media(bob, url, api=api, token=None)
        server = await get_media(bob, url, api=api, token=None, base_url=stub.base_url)
        assert (answer.status, answer.body) == (server.status, server.body), answer
        assert_not_plaintext(answer, PNG[8:200])
    assert (await get_media(bob, url, api="v3", token=None)).body == stored
    assert (await get_media(bob, url, api="v1", token=None)).status == 401

    # A token the server does not know: its answer too, never the file.
    forged = PlainClient(session, bob.base_url, "not-a-real-token")
    for api in ("v1", "v3"):
        answer = await get_media(forged, url, api=api)
        assert_not_plaintext(answer, PNG[8:200])
        assert answer.status != 200 or answer.body == stored, answer


# -- everywhere else: plaintext, once ----------------------------------------------------------


async def test_file_into_an_unencrypted_room_goes_up_once_in_plaintext(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await alice.create_room(invite=[bob.user_id])
    await bob.join(room_id)
    data = b"plain words for everybody " * 40
    before = len(stub.requests)
    url = await upload_media(alice, data, "text/plain", filename="notes.txt")
    content = {"msgtype": "m.file", "body": "notes.txt", "url": url, "info": {"size": len(data)}}
    event_id = await alice.send(room_id, content)

    media = stub_media(stub, url)
    assert media.content == data
    assert media.content_type == "text/plain"
    media_id = url.rsplit("/", 1)[1]
    uploads = [r for r in stub.requests[before:] if "/media/v3/upload" in r.path]
    assert [(r.method, r.path.rsplit("/", 1)[1]) for r in uploads] == [("PUT", media_id)], uploads
    [stored_event] = [e for e in stub.raw_events(room_id) if e.get("event_id") == event_id]
    assert stored_event["type"] == "m.room.message"
    assert stored_event["content"]["url"] == url
    assert "file" not in stored_event["content"]

    # The server's own media (and thumbnails) serve it; through the proxy too.
    event = await bob.wait_for_event(room_id, event_id)
    assert event["content"]["url"] == url
    for api in ("v1", "v3"):
        assert_served(await get_media(bob, url, api=api), data, "text/plain")
    assert (await get_media(bob, url, base_url=stub.base_url)).body == data
    # Sending it again does not upload it again.
    await alice.send(room_id, content)
    assert len([r for r in stub.requests[before:] if "/media/v3/upload" in r.path]) == 1


async def test_encrypted_file_passed_on_into_an_unencrypted_room_goes_as_plaintext_copy(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """A relay bot passes a decrypted event on into an unencrypted room: its readers may have no
    key, so the room gets a plaintext copy under a new id, and the event loses the key."""
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    secret_room = await encrypted_room_of(alice, bob)
    event_id, url, thumb = await send_image(alice, secret_room)
    received = (await bob.wait_for_event(secret_room, event_id))["content"]
    assert "file" in received and received["url"] == url

    plain_room = await bob.create_room(invite=[alice.user_id])
    await alice.join(plain_room)
    relayed = await bob.send(plain_room, received)
    [stored] = [e for e in stub.raw_events(plain_room) if e.get("event_id") == relayed]
    content = stored["content"]
    assert stored["type"] == "m.room.message"
    assert "file" not in content and "thumbnail_file" not in content.get("info", {})
    assert "key" not in json.dumps(content)
    assert content["url"] not in (url, thumb)
    assert content["info"]["thumbnail_url"] not in (url, thumb)
    assert stub_media(stub, content["url"]).content == PNG
    assert stub_media(stub, content["info"]["thumbnail_url"]).content == THUMB
    # Straight from the server, as any reader of that room would get it.
    answer = await get_media(alice, content["url"], base_url=stub.base_url)
    assert answer.status == 200 and answer.body == PNG


async def test_avatars_go_up_in_plaintext(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)

    # m.room.avatar of an encrypted room: state is never encrypted, so neither is its image.
    room_avatar = await upload_media(alice, PNG, "image/png", filename="room.png")
    path = f"/_matrix/client/v3/rooms/{room_id}/state/m.room.avatar/"
    await alice.call("PUT", path, {"url": room_avatar, "info": {"mimetype": "image/png"}})
    media = stub_media(stub, room_avatar)
    assert media.content == PNG and media.content_type == "image/png"
    [state] = [e for e in stub.raw_events(room_id) if e["type"] == "m.room.avatar"]
    assert state["content"]["url"] == room_avatar
    assert_served(await get_media(bob, room_avatar), PNG, "image/png")

    # Profile avatar: published before the request goes on (the stub has no profile API, so
    # its answer is an error; what matters is what it holds and what it was asked).
    avatar = await upload_media(alice, THUMB, "image/png", filename="me.png")
    before = len(stub.requests)
    await alice.request(
        "PUT", f"/_matrix/client/v3/profile/{alice.user_id}/avatar_url", {"avatar_url": avatar}
    )
    media = stub_media(stub, avatar)
    assert media.content == THUMB and media.content_type == "image/png"
    forwarded = [r for r in stub.requests[before:] if r.path.endswith("/avatar_url")]
    assert [r.json for r in forwarded] == [{"avatar_url": avatar}], forwarded


# -- servers without asynchronous uploads ------------------------------------------------------


async def test_without_asynchronous_uploads_the_file_goes_up_at_send_time(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    stub.faults.add(r"/media/v1/create$", method="POST", status=404, errcode="M_UNRECOGNIZED")
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    secret_room = await encrypted_room_of(alice, bob)
    plain_room = await alice.create_room(invite=[bob.user_id])
    await bob.join(plain_room)
    before = len(stub.requests)
    placeholder = await upload_media(alice, PNG, "image/png", filename="nocreate.png")
    assert_served(await get_media(alice, placeholder), PNG, "image/png")
    assert not [r for r in stub.requests[before:] if "/media/v3/upload" in r.path]

    event_id = await alice.send(
        secret_room,
        {
            "msgtype": "m.image",
            "body": "nocreate.png",
            "url": placeholder,
            "info": {"mimetype": "image/png"},
        },
    )
    event = await bob.wait_for_event(secret_room, event_id)
    final = event["content"]["file"]["url"]
    assert final != placeholder and event["content"]["url"] == final, event
    stored = stub_media(stub, final).content
    assert stored is not None
    check_encrypted_file(event["content"]["file"], stored, PNG)
    uploads = [r for r in stub.requests[before:] if "/media/v3/upload" in r.path]
    assert len(uploads) == 1, [(r.method, r.path, r.query) for r in uploads]
    [upload] = uploads
    assert "filename" not in upload.query, upload
    assert_served(await get_media(bob, final), PNG, "image/png")

    data = b"plain text for the plain room " * 10
    placeholder = await upload_media(alice, data, "text/plain", filename="open.txt")
    event_id = await alice.send(
        plain_room, {"msgtype": "m.file", "body": "open.txt", "url": placeholder}
    )
    [stored_event] = [e for e in stub.raw_events(plain_room) if e.get("event_id") == event_id]
    final = stored_event["content"]["url"]
    assert final != placeholder
    assert stub_media(stub, final).content == data


# -- held uploads expire -----------------------------------------------------------------------


async def expire_now(proxy: RunningProxy) -> None:
    app = proxy.server.app
    assert app is not None
    await app[MEDIA].expire_all(list(app[REGISTRY].accounts.values()))


async def test_expired_upload_is_forgotten(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    proxy, (alice, bob) = await proxied(
        stub,
        session,
        start_e2ee_proxy,
        "alice",
        "bob",
        encryption=EncryptionConfig(pending_upload_ttl=0.3),
    )
    room_id = await encrypted_room_of(alice, bob)
    mxc = await upload_media(alice, PNG, "image/png")
    assert_served(await get_media(alice, mxc), PNG, "image/png")
    assert len(spool_files(proxy)) == 1

    await asyncio.sleep(0.5)
    await expire_now(proxy)
    assert spool_files(proxy) == [], "the spool file of an expired upload stays"
    answer = await get_media(alice, mxc, params=NO_WAIT)
    assert answer.status != 200 and answer.errcode == "M_NOT_YET_UPLOADED", answer
    status, body = await alice.send_raw(
        room_id, {"msgtype": "m.image", "body": "late.png", "url": mxc}
    )
    assert status >= 400 and isinstance(body, dict) and body.get("errcode"), body
    assert raw_messages(stub.raw_events(room_id)) == []
    assert stub_media(stub, mxc).content is None


async def test_other_upload_forms_and_url_previews_never_reach_the_server(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """An upload form the proxy does not hold (MSC2246's unstable prefix, another method) would
    put the file on the server in plaintext; a URL preview would tell it what a room said."""
    _, (alice,) = await proxied(stub, session, start_e2ee_proxy, "alice")
    before = len(stub.requests)
    headers = {"Authorization": f"Bearer {alice.access_token}"}
    for method, path, status in (
        ("PUT", "/_matrix/media/unstable/fi.mau.msc2246/upload/stub.test/abc", 400),
        ("POST", "/_matrix/media/v3/upload/", 400),
        ("GET", "/_matrix/media/v3/preview_url?url=https://secret.example/plan", 403),
        ("GET", "/_matrix/client/v1/media/preview_url?url=https://secret.example/plan", 403),
    ):
        async with session.request(
            method, alice.base_url + path, data=PNG, headers=headers
        ) as response:
            assert response.status == status, (path, await response.text())
            assert (await response.json())["errcode"] in ("M_UNRECOGNIZED", "M_FORBIDDEN")
    assert client_made(stub, before) == []
