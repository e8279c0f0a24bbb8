"""A 100 MB attachment through the proxy, encrypted, with bounded memory both ways.

The proxy runs as a real `e2eproxy run` process so its peak resident memory (VmHWM) can be read
apart from the test process and the stub (which must hold the file). The file goes up through the
proxy, into an encrypted room, and another user behind the proxy downloads it with a slow reader,
so a proxy that buffered either way would show it in its peak memory.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.plain_client import (
    PlainClient,
    encrypted_room_of,
    login_all,
    media_path,
    stub_media,
)
from tests.support.processes import ProxyProcess, peak_rss_mb
from tests.support.stub_homeserver import StubHomeserver

MIB = 1024 * 1024
BODY_MIB = 100
MAX_GROWTH_MB = 20
# The slow reader: small reads, a tiny pause after each.
READ_SIZE = 64 * 1024
READ_PAUSE_S = 0.001


def piece(i: int) -> bytes:
    return bytes([(i * 7) % 251]) * MIB


async def body() -> AsyncIterator[bytes]:
    for i in range(BODY_MIB):
        yield piece(i)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
async def test_100_mb_attachment_encrypted_up_and_decrypted_down_in_bounded_memory(
    stub: StubHomeserver, proxy_process: ProxyProcess
) -> None:
    proxy, pid = proxy_process.url, proxy_process.pid
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        alice, bob = await login_all(http, proxy, stub, "alice", "bob")
        room_id = await encrypted_room_of(alice, bob)
        await alice.send_text(room_id, "warming up the room key")
        baseline = peak_rss_mb(pid)

        size = BODY_MIB * MIB
        async with http.post(
            f"{proxy}/_matrix/media/v3/upload",
            data=body(),
            headers={
                "Authorization": f"Bearer {alice.access_token}",
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
            },
        ) as response:
            assert response.status == 200, await response.text()
            mxc = (await response.json())["content_uri"]
        after_upload = peak_rss_mb(pid)

        content = {"msgtype": "m.file", "body": "big.bin", "url": mxc, "info": {"size": size}}
        event_id = await alice.send(room_id, content)
        after_send = peak_rss_mb(pid)
        stored = stub_media(stub, mxc).content
        assert stored is not None and len(stored) == size
        expected = hashlib.sha256()
        for i in range(BODY_MIB):
            expected.update(piece(i))
        assert hashlib.sha256(stored).digest() != expected.digest(), "stored in plaintext"
        del stored

        event = await bob.wait_for_event(room_id, event_id, deadline_s=20)
        assert event["content"].get("url") == mxc, event
        try:
            received, got = await slow_download(bob, mxc)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nproxy log:\n{proxy_process.tail(60)}") from None
        after_download = peak_rss_mb(pid)

    assert got == size
    assert received == expected.hexdigest(), "the download is not the file"
    growth = {
        "upload": after_upload - baseline,
        "send (encrypt + upload to the server)": after_send - baseline,
        "download (fetch + decrypt to a slow reader)": after_download - baseline,
    }
    assert all(g < MAX_GROWTH_MB for g in growth.values()), (baseline, growth)


async def slow_download(client: PlainClient, mxc: str) -> tuple[str, int]:
    """Read the plaintext through the proxy in small reads with a pause after each."""
    digest = hashlib.sha256()
    size = 0
    headers = {"Authorization": f"Bearer {client.access_token}"}
    async with client.http.get(client.base_url + media_path(mxc), headers=headers) as response:
        assert response.status == 200, await response.text()
        while chunk := await response.content.read(READ_SIZE):
            digest.update(chunk)
            size += len(chunk)
            await asyncio.sleep(READ_PAUSE_S)
    return digest.hexdigest(), size
