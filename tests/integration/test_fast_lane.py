"""The pass-through's lean lane (e2eproxy/proxy/fast_lane.py): a body-less GET or HEAD goes out
as the same bytes the session would send, on a kept-alive connection of its own, and a failure
reads as it did through the session. Against a scripted raw HTTP server, which records every
request head and the connection it came on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from e2eproxy.errors import UpstreamError
from e2eproxy.proxy.fast_lane import LaneResponse, LaneUnavailable, request_head
from e2eproxy.proxy.upstream import Upstream
from tests.integration.conftest import StartProxy
from tests.support.tls import trusted_server_context

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
# What the server does with the Nth request head it reads: the bytes to answer, or None to
# close the connection without an answer.
Script = Callable[[int, bytes], bytes | None]


@dataclass
class RawServer:
    script: Script
    heads: list[tuple[int, bytes]] = field(default_factory=list)  # (connection, head)
    connections: int = 0
    ended: list[int] = field(default_factory=list)  # connections the client closed
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    silent: asyncio.Event | None = None  # set: hold every answer until it is set
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self.writers.append(writer)
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                self.ended.append(number)
                writer.close()
                return
            self.heads.append((number, head))
            if self.silent is not None:
                await self.silent.wait()
            answer = self.script(len(self.heads), head)
            if answer is None:
                writer.close()
                return
            writer.write(answer)
            await writer.drain()

    def drop_idle(self) -> None:
        for writer in self.writers:
            writer.close()


StartRaw = Callable[..., Awaitable[RawServer]]


@pytest.fixture
async def raw_server() -> AsyncIterator[StartRaw]:
    """`await raw_server(script, silent=None)`: a RawServer on an ephemeral port."""
    servers: list[tuple[asyncio.Server, RawServer]] = []

    async def start(script: Script, silent: asyncio.Event | None = None) -> RawServer:
        raw = RawServer(script, silent=silent)
        server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
        servers.append((server, raw))
        raw.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return raw

    yield start
    for server, raw in servers:
        if raw.silent is not None:
            raw.silent.set()
        server.close()


async def upstream_for(raw: RawServer) -> Upstream:
    upstream = Upstream(raw.url, read_timeout=5.0)
    await upstream.start()
    return upstream


HEADERS = [("Authorization", "Bearer tok"), ("Accept", "*/*"), ("X-Twice", "1"),
           ("X-Twice", "2"), ("X-Forwarded-For", "127.0.0.1")]


async def get(upstream: Upstream, method: str = "GET", path: str = "/_matrix/client/versions",
              headers: list[tuple[str, str]] | None = None) -> tuple[int, bytes, type[object]]:
    async with upstream.pass_on(method, path, headers or HEADERS) as response:
        return response.status, await response.read(), type(response)


async def test_the_lane_sends_the_bytes_the_session_would(raw_server: StartRaw) -> None:
    raw = await raw_server(lambda n, head: OK if not head.startswith(b"HEAD") else
                           b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    upstream = await upstream_for(raw)
    try:
        path = "/_matrix/client/v3/rooms/%21r%3Ax/state?a=1&b=%20"
        for method in ("GET", "HEAD"):
            status, body, kind = await get(upstream, method, path)
            assert (status, kind) == (200, LaneResponse)
            assert body == (b"{}" if method == "GET" else b"")
            async with upstream.open(method, path, HEADERS) as response:
                await response.read()
        heads = [head for _, head in raw.heads]
        assert heads[0] == heads[1] and heads[2] == heads[3]
        assert heads[0].startswith(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1:")
    finally:
        await upstream.close()


async def test_other_methods_and_bodies_take_the_session(raw_server: StartRaw) -> None:
    raw = await raw_server(lambda n, head: OK)
    upstream = await upstream_for(raw)
    try:
        async with upstream.pass_on("DELETE", "/x", HEADERS) as response:
            assert not isinstance(response, LaneResponse)
        async with upstream.pass_on("GET", "/x", HEADERS, body=b"") as response:
            assert not isinstance(response, LaneResponse)
    finally:
        await upstream.close()


async def test_one_connection_is_kept_alive_and_a_closed_one_replaced(raw_server: StartRaw) -> None:
    raw = await raw_server(lambda n, head: OK)
    upstream = await upstream_for(raw)
    try:
        for _ in range(3):
            assert (await get(upstream))[0] == 200
        assert raw.connections == 1
        raw.drop_idle()  # the server closes its idle connection
        await asyncio.sleep(0.05)
        assert (await get(upstream))[0] == 200
        assert raw.connections == 2
        assert [number for number, _ in raw.heads] == [1, 1, 1, 2]
    finally:
        await upstream.close()
    await asyncio.sleep(0.05)
    assert 2 in raw.ended  # close() let go of the idle connection


async def test_a_connection_closed_under_a_request_is_tried_once_more(raw_server: StartRaw) -> None:
    raw = await raw_server(lambda n, head: None if n == 2 else OK)
    upstream = await upstream_for(raw)
    try:
        assert (await get(upstream))[0] == 200
        # The second request's connection closes before any answer: sent again, on a new one.
        assert (await get(upstream))[0] == 200
        assert [number for number, _ in raw.heads] == [1, 1, 2]
    finally:
        await upstream.close()


async def test_a_connection_that_always_closes_is_a_502(raw_server: StartRaw) -> None:
    raw = await raw_server(lambda n, head: None)
    upstream = await upstream_for(raw)
    try:
        with pytest.raises(UpstreamError) as caught:
            await get(upstream)
        assert caught.value.status == 502
        assert "ServerDisconnectedError" in caught.value.message
        assert len(raw.heads) == 2  # once, and once more: no third try the session's way
    finally:
        await upstream.close()


async def test_a_body_left_unread_closes_its_connection(raw_server: StartRaw) -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1_000_000
    raw = await raw_server(lambda n, head: big if n == 1 else OK)
    upstream = await upstream_for(raw)
    try:
        async with upstream.pass_on("GET", "/big", HEADERS) as response:
            await response.content.read(10)  # a client gone after the first chunk
        assert (await get(upstream))[0] == 200
        assert raw.connections == 2  # the half-read one was not reused
    finally:
        await upstream.close()


async def test_a_malformed_answer_is_a_502(raw_server: StartRaw) -> None:
    raw = await raw_server(lambda n, head: b"NOT HTTP AT ALL\r\n\r\n")
    upstream = await upstream_for(raw)
    try:
        with pytest.raises(UpstreamError) as caught:
            await get(upstream)
        assert caught.value.status == 502
    finally:
        await upstream.close()


async def test_a_silent_server_is_a_504(raw_server: StartRaw) -> None:
    raw = await raw_server(lambda n, head: OK, silent=asyncio.Event())
    upstream = Upstream(raw.url, read_timeout=0.2)
    await upstream.start()
    try:
        with pytest.raises(UpstreamError) as caught:
            await get(upstream)
        assert caught.value.status == 504
    finally:
        await upstream.close()


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "caf\udce9"])
def test_a_head_that_would_not_go_out_byte_for_byte_is_left_to_the_session(value: str) -> None:
    with pytest.raises(LaneUnavailable):
        request_head("GET", "/x", "Host: h\r\n", [("X-Odd", value)])
    assert request_head("GET", "/x", "Host: h\r\n", [("X-Fine", "café")]) == (
        "GET /x HTTP/1.1\r\nHost: h\r\nX-Fine: café\r\n\r\n".encode())


async def test_an_https_homeserver_is_reached_with_its_certificate_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context, ca_file = trusted_server_context(tmp_path)
    raw = RawServer(lambda n, head: OK)
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        # Trusted (the CA is the client's) and named in the certificate: the lean lane.
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        upstream = Upstream(f"https://localhost:{port}", read_timeout=5.0)
        await upstream.start()
        try:
            assert (await get(upstream))[:2] == (200, b"{}")
            assert (await get(upstream))[2] is LaneResponse
            assert raw.connections == 1
            assert raw.heads[0][1].split(b"\r\n")[1] == f"Host: localhost:{port}".encode()
        finally:
            await upstream.close()
        # Not trusted: refused as the session refuses it (whose error the client reads).
        monkeypatch.delenv("SSL_CERT_FILE")
        upstream = Upstream(f"https://localhost:{port}", read_timeout=5.0)
        await upstream.start()
        try:
            with pytest.raises(UpstreamError) as caught:
                await get(upstream)
            assert caught.value.status == 502
            assert "Certificate" in caught.value.message
            assert raw.connections == 1  # no request went out on an unchecked connection
        finally:
            await upstream.close()
    finally:
        server.close()


async def test_a_large_answer_streams_at_the_pace_of_the_client(
    exact_session: aiohttp.ClientSession, start_proxy: StartProxy
) -> None:
    """A big pass-through GET is not buffered: while the client reads nothing, the homeserver
    can write only what the sockets and one read buffer hold, far below the body."""
    size, piece = 64 * 1024 * 1024, b"x" * (1024 * 1024)
    written = 0

    async def big(request: web.Request) -> web.StreamResponse:
        nonlocal written
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        await response.prepare(request)
        while written < size:
            await response.write(piece)
            written += len(piece)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/_matrix/client/v3/big", big)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        proxy = await start_proxy(homeserver=str(server.make_url("")).rstrip("/"))
        async with exact_session.get(f"{proxy}/_matrix/client/v3/big") as response:
            assert response.status == 200
            received = len(await response.content.readexactly(1024))
            await asyncio.sleep(0.5)  # a slow client
            assert written <= 24 * 1024 * 1024, written
            async for chunk in response.content.iter_chunked(1024 * 1024):
                received += len(chunk)
        assert received == size == written
    finally:
        await server.close()
