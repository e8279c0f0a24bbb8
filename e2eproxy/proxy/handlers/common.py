"""Shared by the handlers that must read a homeserver answer: forward, parse, answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from aiohttp import web
from multidict import CIMultiDict

from e2eproxy.errors import Forbidden, MatrixError, MissingToken, Unrecognized, token_refused
from e2eproxy.protocol.canonical import parse_json
from e2eproxy.proxy.app_keys import REGISTRY, STOPPING, UPSTREAM
from e2eproxy.proxy.registry import TokenInfo, token_of
from e2eproxy.proxy.upstream import forward_request_headers, forward_response_headers, long_poll_ms

T = TypeVar("T")

# Re-encoded bodies get their own length and encoding.
_BODY_HEADERS = ("content-length", "content-encoding", "content-type", "transfer-encoding")


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]
    raw: bytes
    data: Any


def with_filter(request: web.Request, upstream_filter: dict[str, Any]) -> str:
    """The request's path and query with its `filter` parameter replaced by `upstream_filter`."""
    params = [
        (k, v) for k, v in parse_qsl(request.query_string, keep_blank_values=True) if k != "filter"
    ]
    params.append(("filter", json.dumps(upstream_filter, separators=(",", ":"))))
    raw_path = request.raw_path.split("?", 1)[0]  # still percent-encoded, as the client sent it
    return f"{raw_path}?{urlencode(params)}"


async def forward_for_json(
    request: web.Request, *, path_and_query: str | None = None, body: bytes | None = None
) -> Answer:
    """Forward the client's request (optionally with another path/query or body) and read the
    whole answer; `data` is the parsed JSON or None."""
    headers = forward_request_headers(request.headers, request.remote)
    # Identity encoding: the answer is parsed here, not passed through as bytes.
    headers.pop("Accept-Encoding", None)
    if body is None and request.body_exists:
        body = await request.read()
    elif body is not None:
        headers["Content-Length"] = str(len(body))
    async with request.app[UPSTREAM].open(
        request.method,
        path_and_query or request.raw_path,
        headers,
        body,
        long_poll_ms(request.query),
    ) as response:
        raw = await response.read()
        status = response.status
        answer_headers = forward_response_headers(response.headers)
    data = None
    if raw and "json" in answer_headers.get("Content-Type", ""):
        try:
            data = parse_json(raw)
        except ValueError:
            data = None
    if token_refused(status, data):
        token = token_of(request)
        if token:
            request.app[REGISTRY].forget_token(token)
    return Answer(status, answer_headers, raw, data)


def json_bytes(data: Any) -> bytes:
    """Compact UTF-8 JSON of a body the proxy rewrote. A string with a lone surrogate (what
    `json.loads` makes of a "\\ud800" escape, which UTF-8 cannot hold) comes out escaped, as
    it came: a body with one must not fail the whole response (a /sync would fail for ever)."""
    try:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(data, separators=(",", ":")).encode()


def respond(answer: Answer, data: Any = None) -> web.Response:
    """The answer as the server gave it, or with `data` as its new JSON body."""
    if data is None:
        return web.Response(status=answer.status, headers=answer.headers, body=answer.raw)
    headers = CIMultiDict(
        (k, v) for k, v in answer.headers.items() if k.lower() not in _BODY_HEADERS
    )
    return web.Response(
        status=answer.status,
        headers=headers,
        body=json_bytes(data),
        content_type="application/json",
    )


def refuse_encoded_body(request: web.Request) -> None:
    """The proxy never inflates a request body (a few kB of gzip can inflate to gigabytes):
    the endpoints whose bodies it reads take them uncompressed only."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise Unrecognized(
            "e2eproxy does not accept a compressed request body here", status=415
        )


async def read_body(request: web.Request) -> bytes:
    """The whole body of a request the proxy must read: uncompressed, and at most the
    configured `max_json_body` (aiohttp's client_max_size; beyond it, 413 M_TOO_LARGE)."""
    refuse_encoded_body(request)
    return await request.read()


def require_token(request: web.Request) -> str:
    """Refused before any of its body is read: the endpoints that call this need a token, and
    the proxy cannot tell whose request it would be handling without one."""
    token = token_of(request)
    if token is None:
        raise MissingToken("Missing access token")
    return token


async def token_info(request: web.Request) -> TokenInfo | None:
    return await request.app[REGISTRY].for_request(request)


def refuse(info: TokenInfo) -> MatrixError:
    return Forbidden(info.refusal or "No encryption for this token")


async def unless_stopping(request: web.Request, work: Awaitable[T]) -> T | None:
    """Run `work` (waiting on an upstream long-poll) but give up when the proxy is stopping, so a
    restart never waits for a 30 s /sync. Only the wait is cut: nothing was received, nothing is
    lost (the server deletes to-device messages only when a later `since` acknowledges them)."""
    stopping = request.app[STOPPING]
    if stopping.is_set():
        return None
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None
