"""The one HTTP client towards the homeserver, and the header rules of a transparent proxy."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from e2eproxy.errors import Unrecognized, UpstreamError
from e2eproxy.protocol.canonical import parse_json
from e2eproxy.proxy.fast_lane import LANE_METHODS, FastLane, LaneResponse, LaneUnavailable
from e2eproxy.proxy.targets import target_problem

log = logging.getLogger(__name__)

# RFC 9110 section 7.6.1: connection-specific headers are never forwarded by a proxy.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
# Set by the HTTP client from the URL we send to; and what a client may say about where it is
# (a homeserver that trusts these would log, rate-limit and ban the address the client chose).
_REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
}
# The proxy decides CORS itself: the homeserver's "Access-Control-Allow-Origin: *" must not leak
# through unless the operator configured it.
_RESPONSE_DROP = HOP_BY_HOP | {
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
}

# Background syncs that return at once with all that is new (an account's first after a start,
# an initial one) in flight at a time per homeserver: a restart must not ask for a thousand.
CATCH_UP_SYNCS = 8
# How long a long-polling /sync may stay silent beyond the timeout the client asked for.
LONG_POLL_GRACE_S = 30.0
CONNECT_TIMEOUT_S = 10.0


def _connection_tokens(headers: Mapping[str, str]) -> set[str]:
    """Headers named in Connection are hop-by-hop too (RFC 9110 section 7.6.1)."""
    value = headers.get("Connection", "")
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def forwarded_request_items(
    headers: CIMultiDictProxy[str], peer: str | None = None
) -> list[tuple[str, str]]:
    """The client's headers for the homeserver, in order; X-Forwarded-For (last) names the peer
    we saw."""
    dropped = (_REQUEST_DROP | _connection_tokens(headers)) if "Connection" in headers else (
        _REQUEST_DROP)
    forwarded = [(k, v) for k, v in headers.items() if k.lower() not in dropped]
    if peer:
        forwarded.append(("X-Forwarded-For", peer))
    return forwarded


def forward_request_headers(
    headers: CIMultiDictProxy[str], peer: str | None = None
) -> CIMultiDict[str]:
    """The client's headers for the homeserver; X-Forwarded-For names the peer we saw."""
    return CIMultiDict(forwarded_request_items(headers, peer))


def forward_response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    dropped = (_RESPONSE_DROP | _connection_tokens(headers)) if "Connection" in headers else (
        _RESPONSE_DROP)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in dropped)


def long_poll_ms(query: Mapping[str, str]) -> float:
    """The `timeout` a client asked the server to hold the request (sync, keys/claim), in ms."""
    try:
        return max(0.0, float(query.get("timeout", "0")))
    except ValueError:
        return 0.0


class Upstream:
    """Owns the ClientSession for one homeserver.

    Bodies are never decompressed here (auto_decompress=False): a pass-through response goes back
    byte for byte with its Content-Encoding. Handlers that must read JSON ask for identity encoding.
    """

    def __init__(self, base_url: str, read_timeout: float) -> None:
        self.base_url = URL(base_url)
        self.read_timeout = read_timeout
        self._session: aiohttp.ClientSession | None = None
        self._lane: FastLane | None = None
        self.catch_up = asyncio.Semaphore(CATCH_UP_SYNCS)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Shared by every account: a cookie the homeserver set in an answer to one user
            # must never go out with another's request (the client's own Cookie header is
            # passed on as it sent it). Also no cookie filtering on every request.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self._lane = FastLane(self.base_url, CONNECT_TIMEOUT_S)

    async def close(self) -> None:
        if self._lane is not None:
            self._lane.close()
            self._lane = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream used before start()")
        return self._session

    def url_for(self, raw_path_and_query: str) -> URL:
        """The homeserver URL for a raw (still percent-encoded) path and query.

        Built from its parts, never by joining strings: a target such as `pany://x/...` would
        otherwise turn `https://matrix.example.com` into another host. Whatever comes in, the
        URL has the configured scheme, host and port, or this raises MatrixError (400).
        """
        problem = target_problem(raw_path_and_query)
        if problem is not None:
            raise Unrecognized(f"e2eproxy: {problem}")
        path, _, query = raw_path_and_query.partition("?")
        base = self.base_url
        url = URL.build(
            scheme=base.scheme,
            authority=base.raw_authority,
            path=base.raw_path.rstrip("/") + path,
            query_string=query,
            encoded=True,
        )
        if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
            raise Unrecognized("e2eproxy: request target names another host")
        return url

    def timeout_for(self, extra_ms: float = 0.0) -> aiohttp.ClientTimeout:
        grace = LONG_POLL_GRACE_S if extra_ms else 0.0
        return aiohttp.ClientTimeout(
            total=None,
            sock_connect=CONNECT_TIMEOUT_S,
            sock_read=self.read_timeout + extra_ms / 1000.0 + grace,
        )

    @asynccontextmanager
    async def open(
        self,
        method: str,
        raw_path_and_query: str,
        headers: Iterable[tuple[str, str]] | Mapping[str, str],
        body: Any = None,
        long_poll: float = 0.0,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request; yield the response with its body still unread.

        Connection failures become UpstreamError(502) and timeouts UpstreamError(504), raised
        only before the response starts: once a client has headers, we can only cut the body.
        """
        url = self.url_for(raw_path_and_query)
        with _upstream_errors():
            async with self.session.request(
                method,
                url,
                headers=CIMultiDict(headers),
                data=body,
                allow_redirects=False,
                timeout=self.timeout_for(long_poll),
            ) as response:
                yield response

    @asynccontextmanager
    async def pass_on(
        self,
        method: str,
        raw_path_and_query: str,
        headers: list[tuple[str, str]],
        body: Any = None,
        long_poll: float = 0.0,
    ) -> AsyncIterator[aiohttp.ClientResponse | LaneResponse]:
        """`open` for the pass-through: a body-less GET or HEAD takes the lean lane (same
        checks, same bytes on the wire, same errors), anything else the session."""
        lane = self._lane
        if lane is not None and body is None and method in LANE_METHODS:
            url = self.url_for(raw_path_and_query)
            sock_read = self.read_timeout + long_poll / 1000.0 + (
                LONG_POLL_GRACE_S if long_poll else 0.0)
            try:
                with _upstream_errors():
                    async with lane.open(method, url, headers, sock_read) as response:
                        yield response
                return
            except LaneUnavailable:
                pass  # nothing was sent
        async with self.open(method, raw_path_and_query, headers, body, long_poll) as response:
            yield response

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        access_token: str | None = None,
        body: Any = None,
        long_poll: float = 0.0,
    ) -> tuple[int, Any]:
        """A small JSON request of the proxy's own; returns (status, parsed body or None)."""
        headers = {"Accept": "application/json"}
        if access_token is not None:
            headers["Authorization"] = f"Bearer {access_token}"
        if body is not None:
            headers["Content-Type"] = "application/json"
        data = None if body is None else _json_bytes(body)
        async with self.open(method, path, headers, data, long_poll) as response:
            raw = await response.read()
        try:
            return response.status, parse_json(raw) if raw else None
        except ValueError:
            return response.status, None


@contextmanager
def _upstream_errors() -> Iterator[None]:
    """Connection failures become UpstreamError(502), timeouts UpstreamError(504)."""
    try:
        yield
    except TimeoutError as exc:
        raise UpstreamError(504, "The homeserver did not answer in time") from exc
    except aiohttp.ClientConnectionError as exc:
        raise UpstreamError(502, f"Cannot reach the homeserver: {type(exc).__name__}") from exc
    except aiohttp.ClientPayloadError as exc:
        raise UpstreamError(502, "The homeserver sent a broken response") from exc


def _json_bytes(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
