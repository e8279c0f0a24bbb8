"""Encrypted attachments through the proxy, against a real Synapse and a matrix-nio E2EE peer.

The plain client behind the proxy sends an image with a thumbnail into an encrypted room and the
peer decrypts both with nio's own attachment code; the peer sends an encrypted file (nio's
`encrypt_attachment`) and the plain client downloads the plaintext through the proxy with the
`url` its decrypted /sync gave it. What Synapse stores for the room, read directly, is never the
plaintext.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import pytest

from tests.support.e2e_clients import Plain, plain_with_peer_room, show
from tests.support.nio_peer import (
    PeerFactory,
    decrypt_file,
    download_media_raw,
    upload_encrypted_file,
)
from tests.support.plain_client import get_media, upload_media
from tests.support.synapse import SynapseServer
from tests.support.wire import assert_ciphertext_only

pytestmark = pytest.mark.e2e

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(20_000)
THUMB = b"\x89PNG\r\n\x1a\n" + os.urandom(2_000)


async def download_through(
    plain: Plain,
    mxc: str,
    kind: str = "download",
    api: str = "v1",
    params: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    answer = await get_media(plain.client, mxc, kind, api, params=params)
    return answer.status, answer.headers, answer.body


def assert_stored_is_ciphertext(stored: bytes, plaintext: bytes) -> None:
    assert stored != plaintext
    assert len(stored) == len(plaintext)
    assert plaintext[:8] not in stored and plaintext[8:64] not in stored


async def test_plain_client_image_with_thumbnail_decrypts_in_nio(
    session: aiohttp.ClientSession,
    proxy_url: str,
    synapse: SynapseServer,
    nio_peers: PeerFactory,
    localpart: str,
) -> None:
    plain, peer, room_id = await plain_with_peer_room(
        session, proxy_url, synapse, nio_peers, localpart
    )
    url = await upload_media(plain.client, PNG, "image/png", "holiday-secret.png")
    thumb = await upload_media(plain.client, THUMB, "image/png", "holiday-thumb.png")
    content: dict[str, Any] = {
        "msgtype": "m.image",
        "body": "holiday-secret.png",
        "url": url,
        "info": {
            "mimetype": "image/png",
            "size": len(PNG),
            "w": 100,
            "h": 100,
            "thumbnail_url": thumb,
            "thumbnail_info": {"mimetype": "image/png", "size": len(THUMB), "w": 10, "h": 10},
        },
    }
    event_id = await plain.send(room_id, "m.room.message", content)

    seen = await peer.wait_for_event(room_id, event_id)
    assert seen.encrypted and seen.type == "m.room.message", seen
    got = seen.content
    assert got["msgtype"] == "m.image" and got["body"] == "holiday-secret.png", show(got)
    assert "url" not in got and "thumbnail_url" not in got["info"], show(got)
    file, thumb_file = got["file"], got["info"]["thumbnail_file"]
    assert file["v"] == thumb_file["v"] == "v2", show(got)
    assert file["url"] == url and thumb_file["url"] == thumb, show(got)
    assert file["key"]["k"] != thumb_file["key"]["k"], "one key for file and thumbnail"

    # The peer fetches the ciphertext from Synapse itself and decrypts it with nio's code.
    stored = await download_media_raw(peer, url, synapse.base_url)
    stored_thumb = await download_media_raw(peer, thumb, synapse.base_url)
    assert decrypt_file(file, stored) == PNG
    assert decrypt_file(thumb_file, stored_thumb) == THUMB
    assert_stored_is_ciphertext(stored, PNG)
    assert_stored_is_ciphertext(stored_thumb, THUMB)

    # The room's history on Synapse is ciphertext only (no url, no filename beside it).
    raw = await synapse.room_messages(peer.access_token, room_id)
    assert event_id in [e["event_id"] for e in assert_ciphertext_only(raw)]
    assert "holiday" not in show(raw)

    # The sender reads its own image and thumbnail back decrypted through the proxy.
    status, headers, body = await download_through(plain, url)
    assert (status, body == PNG) == (200, True), (status, headers)
    assert headers["Content-Type"].startswith("image/png"), headers
    params = {"width": "32", "height": "32", "method": "scale"}
    status, headers, body = await download_through(plain, url, "thumbnail", params=params)
    assert (status, body == THUMB) == (200, True), (status, headers, body[:200])


async def test_nio_encrypted_file_downloads_decrypted_through_the_proxy(
    session: aiohttp.ClientSession,
    proxy_url: str,
    synapse: SynapseServer,
    nio_peers: PeerFactory,
    localpart: str,
) -> None:
    plain, peer, room_id = await plain_with_peer_room(
        session, proxy_url, synapse, nio_peers, localpart
    )
    plaintext = ("a secret report from the nio peer ✓\n" * 500).encode()
    file, ciphertext = await upload_encrypted_file(peer, plaintext, synapse.base_url)
    content = {
        "msgtype": "m.file",
        "body": "report-secret.txt",
        "file": file,
        "info": {"mimetype": "text/plain", "size": len(plaintext)},
    }
    event_id = await peer.send(room_id, "m.room.message", content)

    event = await plain.wait_for_event(room_id, event_id)
    assert event["type"] == "m.room.message", show(event)
    got = event["content"]
    assert got["file"]["url"] == file["url"], show(got)
    assert got.get("url") == file["url"], f"no url for a plain client: {show(got)}"

    for api in ("v1", "v3", "r0"):  # /_matrix/client/v1/media, /_matrix/media/v3 and r0
        status, headers, body = await download_through(plain, got["url"], api=api)
        assert status == 200, (api, status, body[:300])
        assert body == plaintext, api
        assert headers["Content-Type"].startswith("text/plain"), (api, headers)
        assert "Content-Disposition" in headers, (api, headers)
    # No image, no thumbnail: a thumbnail request gets the decrypted file.
    status, _, body = await download_through(
        plain, got["url"], "thumbnail", params={"width": "32", "height": "32"}
    )
    assert (status, body == plaintext) == (200, True), (status, body[:300])

    stored = await download_media_raw(peer, file["url"], synapse.base_url)
    assert stored == ciphertext
    assert_stored_is_ciphertext(stored, plaintext)
