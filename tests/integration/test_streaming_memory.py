"""Large bodies stream through the proxy: its peak memory does not grow with the body size.

The proxy runs as a real `e2eproxy run` process so that its peak resident memory (VmHWM) can be
read on its own, apart from the test process and the stub, which must hold the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.processes import ProxyProcess, peak_rss_mb
from tests.support.stub_homeserver import StubHomeserver

BODY_MB = 50
CHUNK = 1024 * 1024
# Far below the body size: buffering the body whole would blow through this at once.
MAX_GROWTH_MB = 16


def chunk(i: int) -> bytes:
    return bytes([i % 251]) * CHUNK


async def body() -> AsyncIterator[bytes]:
    for i in range(BODY_MB):
        yield chunk(i)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
async def test_50_mb_up_and_down_without_buffering(
    stub: StubHomeserver, proxy_process: ProxyProcess
) -> None:
    proxy, pid = proxy_process.url, proxy_process.pid
    stub.register("big", "pw")
    async with aiohttp.ClientSession() as http:
        login = {"type": "m.login.password", "user": "big", "password": "pw"}
        async with http.post(f"{proxy}/_matrix/client/v3/login", json=login) as response:
            auth = {"Authorization": f"Bearer {(await response.json())['access_token']}"}
        baseline = peak_rss_mb(pid)
        async with http.post(
            f"{proxy}/_matrix/media/v3/upload",
            data=body(),
            headers={
                **auth,
                "Content-Type": "application/octet-stream",
                "Content-Length": str(BODY_MB * CHUNK),
            },
        ) as response:
            assert response.status == 200, await response.text()
            mxc = (await response.json())["content_uri"]
        after_upload = peak_rss_mb(pid)
        expected = hashlib.sha256(b"".join(chunk(i) for i in range(BODY_MB))).hexdigest()
        received = hashlib.sha256()
        size = 0
        async with http.get(
            f"{proxy}/_matrix/client/v1/media/download/{mxc.removeprefix('mxc://')}", headers=auth
        ) as response:
            assert response.status == 200
            async for piece in response.content.iter_chunked(CHUNK):
                received.update(piece)
                size += len(piece)
        after_download = peak_rss_mb(pid)
    assert size == BODY_MB * CHUNK
    assert received.hexdigest() == expected
    assert after_upload - baseline < MAX_GROWTH_MB, (baseline, after_upload)
    assert after_download - baseline < MAX_GROWTH_MB, (baseline, after_download)
