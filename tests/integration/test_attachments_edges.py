"""Encrypted-attachment edge cases: expiry checked on use, unusable file descriptions, and the
upload's content type reaching recipients."""

from __future__ import annotations

import asyncio
import os

import aiohttp

from e2eproxy.config import EncryptionConfig
from tests.integration.conftest import StartE2EEProxy, proxied
from tests.support.plain_client import (
    NO_WAIT,
    direct,
    encrypted_room_of,
    get_media,
    stub_media,
    upload_media,
)
from tests.support.stub_homeserver import StubHomeserver
from tests.support.wire import raw_messages

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)


async def test_expired_upload_is_not_used_before_the_periodic_sweep(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """Bug: get_pending() ignores expires_ms; only the 5-minute sweep forgets an upload, so for
    up to 5 minutes past its lifetime it is still served and still published."""
    _, (alice, bob) = await proxied(
        stub,
        session,
        start_e2ee_proxy,
        "alice",
        "bob",
        encryption=EncryptionConfig(pending_upload_ttl=0.3),
    )
    room_id = await encrypted_room_of(alice, bob)
    mxc = await upload_media(alice, PNG, "image/png")
    await asyncio.sleep(0.6)
    answer = await get_media(alice, mxc, params=NO_WAIT)
    assert answer.status != 200, f"an expired upload is still served: {answer}"
    status, body = await alice.send_raw(
        room_id, {"msgtype": "m.image", "body": "late.png", "url": mxc}
    )
    assert status >= 400, f"an expired upload was still sent: {body}"
    assert raw_messages(stub.raw_events(room_id)) == []
    assert stub_media(stub, mxc).content is None


async def test_unusable_encrypted_file_downloads_as_an_error(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """Bug: an event whose `file` has an unknown version or a bad key is not remembered
    (media_of_event skips it) but still gets a `url` (expose_urls), so the download passes
    through and the client is served the ciphertext as if it were the file, with no error."""
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    mxc = await upload_media(direct(alice, stub), b"\x00" * 64 + PNG, "application/octet-stream")
    good_key = {
        "kty": "oct",
        "key_ops": ["encrypt", "decrypt"],
        "alg": "A256CTR",
        "k": "qcHVMSgYg-71CauWBezXI5qkaRb0LuIy-Wx5kIaHMIA",
        "ext": True,
    }
    sha = {"sha256": "fdSLu/YkRx3Wyh3KQabP3rd6+SFiKg5lsJZQHtkSAYA"}
    files = {
        "unknown version": {
            "url": mxc,
            "key": good_key,
            "iv": "X85+XgHN+HEAAAAAAAAAAA",
            "hashes": sha,
            "v": "v9",
        },
        "short key": {
            "url": mxc,
            "key": {**good_key, "k": "c2hvcnQ"},
            "iv": "X85+XgHN+HEAAAAAAAAAAA",
            "hashes": sha,
            "v": "v2",
        },
    }
    for what, file in files.items():
        event_id = await alice.send(room_id, {"msgtype": "m.file", "body": what, "file": file})
        event = await bob.wait_for_event(room_id, event_id)
        url = event["content"].get("url", mxc)
        answer = await get_media(bob, url)
        assert answer.status >= 400 and isinstance(answer.errcode, str), (
            f"{what}: served as the file: {answer}"
        )


async def test_upload_content_type_reaches_recipients_when_the_event_has_no_mimetype(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """Bug: in an encrypted room the upload's Content-Type is lost for everyone but the sender.
    The ciphertext goes up as application/octet-stream and the recipient's proxy only knows
    `info.mimetype`; when the client left it out (it told the server at upload time, which is
    enough in a plain room), the recipient gets application/octet-stream. The proxy could add
    `info.mimetype` from the upload when it rewrites `url` to `file` (media_refs.py
    _encrypted_file / encrypt_references)."""
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    mxc = await upload_media(alice, PNG, "image/png", filename="bare.png")
    event_id = await alice.send(room_id, {"msgtype": "m.image", "body": "bare.png", "url": mxc})
    await bob.wait_for_event(room_id, event_id)
    answer = await get_media(bob, mxc)
    assert answer.status == 200 and answer.body == PNG, answer
    assert answer.headers["Content-Type"].startswith("image/png"), answer.headers
