"""A lean way to the homeserver for the pass-through's body-less GET and HEAD requests.

Profiled, aiohttp's ClientSession costs more CPU per small request than the proxy's whole
server side: a request object, the connector's bookkeeping, tracing, redirect and cookie
handling, a response object. Most pass-through requests need none of it: one GET on a warm
keep-alive connection. This lane keeps its own idle connections to the homeserver, writes the
request head itself (the same bytes the session would send: Host, then the client's headers as
forwarded) and reads the answer with aiohttp's own response protocol (`ResponseHandler`: the
same C parser, read timeout, chunked bodies and flow control the session uses underneath).

Anything else (a body, another method, a head that does not encode cleanly, a connection that
cannot be opened) goes the session's way, so errors read as they always did.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import aiohttp
from aiohttp.client_proto import ResponseHandler
from multidict import CIMultiDictProxy
from yarl import URL

LANE_METHODS = frozenset({"GET", "HEAD"})
# As aiohttp's connector: an idle connection older than this is closed, not reused.
KEEPALIVE_S = 15.0
# Idle connections kept at most; a burst of more concurrent requests opens more, closed after.
MAX_IDLE = 100
# Failures of a connection the session would also retry once on a new one (RFC 9112 9.3.1:
# an idempotent request whose connection closed before any answer).
_RETRIED = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)


class LaneUnavailable(Exception):
    """Nothing was sent: the request must take the session's way."""


class LaneResponse:
    """The parts of aiohttp's ClientResponse the pass-through reads."""

    __slots__ = ("content", "content_length", "headers", "reason", "status")

    def __init__(self, message: aiohttp.http.RawResponseMessage,
                 payload: aiohttp.StreamReader) -> None:
        self.status: int = message.code
        self.reason: str | None = message.reason
        self.headers: CIMultiDictProxy[str] = message.headers
        self.content = payload
        length = message.headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None

    async def read(self) -> bytes:
        return await self.content.read()


def host_header(base: URL) -> str:
    """What aiohttp sends as Host for `base`: the host, and the port unless it is the default."""
    value = getattr(base, "host_port_subcomponent", None)
    if isinstance(value, str):
        return value
    host = base.raw_host or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return host if base.is_default_port() else f"{host}:{base.port}"


class FastLane:
    """Idle keep-alive connections to one homeserver, used one request at a time each."""

    def __init__(self, base: URL, connect_timeout: float) -> None:
        self.host = base.raw_host or ""
        self.port = base.port or (443 if base.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if base.scheme == "https" else None)
        self.connect_timeout = connect_timeout
        self.host_line = f"Host: {host_header(base)}\r\n"
        # (protocol, when it went idle); the newest on the right, taken first while warm.
        self._idle: collections.deque[tuple[ResponseHandler, float]] = collections.deque()

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        while self._idle:
            self._idle.pop()[0].close()

    def _take_idle(self) -> ResponseHandler | None:
        now = time.monotonic()
        while self._idle:
            protocol, since = self._idle.pop()
            if protocol.is_connected() and not protocol.should_close and \
                    now - since < KEEPALIVE_S:
                return protocol
            protocol.close()
        return None

    def _give_back(self, protocol: ResponseHandler) -> None:
        now = time.monotonic()
        idle = self._idle
        while idle and (len(idle) >= MAX_IDLE or now - idle[0][1] >= KEEPALIVE_S):
            idle.popleft()[0].close()
        idle.append((protocol, now))

    async def _connect(self) -> ResponseHandler:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: ResponseHandler(loop), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None)
        except OSError as exc:
            # The session tries again and names the failure as it always has.
            raise LaneUnavailable(type(exc).__name__) from exc
        return protocol

    @asynccontextmanager
    async def open(self, method: str, url: URL, headers: Iterable[tuple[str, str]],
                   read_timeout: float) -> AsyncIterator[LaneResponse]:
        """Send `method url` with `headers`; yield the answer with its body unread. Raises
        LaneUnavailable, before anything is sent, when the session must take the request."""
        head = request_head(method, url.raw_path_qs, self.host_line, headers)
        protocol, response = await self._exchange(method, head, read_timeout)
        reusable = False
        try:
            yield response
            reusable = response.content.is_eof()
        finally:
            if reusable and not protocol.should_close and protocol.is_connected():
                self._give_back(protocol)
            else:
                protocol.close()

    async def _exchange(self, method: str, head: bytes, read_timeout: float
                        ) -> tuple[ResponseHandler, LaneResponse]:
        failed: Exception | None = None
        while True:
            # Not `or`: a protocol is also a queue, false while empty.
            protocol = self._take_idle()
            if protocol is None:
                try:
                    protocol = await self._connect()
                except LaneUnavailable:
                    if failed is None:
                        raise
                    raise failed from None  # sent once already: no third try elsewhere
            try:
                return protocol, await self._send(protocol, method, head, read_timeout)
            except _RETRIED as exc:
                protocol.close()
                if failed is not None:
                    raise
                failed = exc
            except BaseException:
                protocol.close()
                raise

    @staticmethod
    async def _send(protocol: ResponseHandler, method: str, head: bytes,
                    read_timeout: float) -> LaneResponse:
        protocol.set_response_params(
            skip_payload=method == "HEAD", read_until_eof=True, auto_decompress=False,
            read_timeout=read_timeout,
        )
        transport = protocol.transport
        if transport is None:
            raise aiohttp.ServerDisconnectedError()
        transport.write(head)
        protocol.start_timeout()
        while True:
            try:
                message, payload = await protocol.read()
            except aiohttp.http_exceptions.HttpProcessingError as exc:
                raise aiohttp.ClientPayloadError(f"malformed answer: {exc.message}") from exc
            # 1xx before the answer (no Expect is sent, but a server may): skipped, as the
            # session does.
            if not 100 <= message.code < 200 or message.code == 101:
                return LaneResponse(message, payload)


def request_head(method: str, target: str, host_line: str,
                 headers: Iterable[tuple[str, str]]) -> bytes:
    """The request line and headers. Raises LaneUnavailable for a head that would not go out
    byte for byte (a header the session would refuse or encode otherwise)."""
    lines = [f"{method} {target} HTTP/1.1\r\n", host_line]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append("\r\n")
    text = "".join(lines)
    # Every line break is one of ours: none hides in a name or a value.
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise LaneUnavailable("line break in a header")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise LaneUnavailable("header does not encode") from None
