"""Floors for the pass-through's added latency: what any proxy process on this machine adds.

``python -m bench.floors splice LISTEN_PORT UPSTREAM_PORT``: a TCP forwarder that copies bytes
both ways and knows no HTTP (uvloop when installed): the cost of one more process and two more
loopback hops. ``python -m bench.floors relay LISTEN_PORT UPSTREAM_PORT``: the proxy's own stack
(aiohttp's server, the lean lane of e2eproxy/proxy/fast_lane.py, uvloop) with nothing else: one
catch-all route, no middleware, no checks, headers passed as they are; what is left of the
proxy's cost when all of its own work is taken out. The pass-through workload times both next to
the proxy, in the same rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import cast

import aiohttp
from aiohttp import web
from yarl import URL

from bench.common import REPO, free_port


class _Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    upstream_port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        self.upstream: asyncio.Transport | None = None
        self.early: list[bytes] = []  # what came before the upstream connection was there
        self.opening = asyncio.ensure_future(self._open())

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        upstream, _ = await loop.create_connection(
            lambda: _Upstream(self.transport), "127.0.0.1", self.upstream_port)
        upstream = cast(asyncio.Transport, upstream)
        upstream.writelines(self.early)
        self.upstream = upstream

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def _splice(port: int, upstream_port: int) -> None:
    _Client.upstream_port = upstream_port
    await asyncio.get_running_loop().create_server(_Client, "127.0.0.1", port)
    await asyncio.Event().wait()


async def _relay(port: int, upstream_port: int) -> None:
    from e2eproxy.proxy.fast_lane import FastLane

    lane = FastLane(URL(f"http://127.0.0.1:{upstream_port}"), connect_timeout=10.0)
    dropped = {"host", "content-length", "transfer-encoding", "connection"}

    async def handler(request: web.Request) -> web.Response:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in dropped]
        async with lane.open(request.method, request.rel_url, headers, 60.0) as answer:
            body = await answer.read()
            kept = [(k, v) for k, v in answer.headers.items() if k.lower() not in dropped]
            return web.Response(status=answer.status, headers=kept, body=body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def floor_server(kind: str, upstream_port: int) -> AsyncIterator[str]:
    """One floor process ("splice" or "relay") in front of 127.0.0.1:upstream_port; its URL."""
    port = free_port()
    args = [sys.executable, "-m", "bench.floors", kind, str(port), str(upstream_port)]
    process = subprocess.Popen(args, cwd=str(REPO))
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(400):
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(f"{url}/_matrix/client/versions") as response:
                        await response.read()
                        break
                await asyncio.sleep(0.025)
        yield url
    finally:
        process.terminate()
        process.wait()


def main(argv: list[str]) -> None:
    from e2eproxy.event_loop import run

    kind, port = argv[0], int(argv[1])
    upstream = int(argv[2])
    run(_splice(port, upstream) if kind == "splice" else _relay(port, upstream))


if __name__ == "__main__":
    main(sys.argv[1:])
