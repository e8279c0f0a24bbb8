"""Forward a request to the homeserver untouched, streaming the body both ways."""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from e2eproxy.errors import UpstreamError
from e2eproxy.proxy.app_keys import REGISTRY, UPSTREAM
from e2eproxy.proxy.registry import token_of
from e2eproxy.proxy.upstream import forward_response_headers, forwarded_request_items, long_poll_ms

log = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024
# A body announced this small is read whole and answered in one write with its headers: most
# Matrix API answers are a few hundred bytes, and streaming costs them extra writes.
BUFFER_LIMIT = 64 * 1024


def _request_body(request: web.Request) -> object:
    # A body-less GET must not become a chunked empty body upstream.
    if request.body_exists:
        return request.content
    return None


def _forget_token(request: web.Request) -> None:
    """The server refused the token: resolve it afresh next time (it may have been logged out)."""
    token = token_of(request)
    if token is not None and REGISTRY in request.app:
        request.app[REGISTRY].forget_token(token)


async def passthrough(request: web.Request) -> web.StreamResponse:
    upstream = request.app[UPSTREAM]
    forwarded = forwarded_request_items(request.headers, request.remote)
    long_poll = long_poll_ms(request.query)
    async with upstream.pass_on(
        request.method, request.raw_path, forwarded, _request_body(request), long_poll
    ) as upstream_response:
        if upstream_response.status == 401:
            _forget_token(request)
        headers = forward_response_headers(upstream_response.headers)
        length = upstream_response.content_length
        if length is not None and length <= BUFFER_LIMIT and request.method != "HEAD":
            try:
                body = await upstream_response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise UpstreamError(502, "The homeserver sent a broken response") from exc
            del headers["Content-Length"]  # set again from the body
            return web.Response(
                status=upstream_response.status,
                reason=upstream_response.reason,
                headers=headers,
                body=body,
            )
        response = web.StreamResponse(
            status=upstream_response.status,
            reason=upstream_response.reason,
            headers=headers,
        )
        await response.prepare(request)
        try:
            async for chunk in upstream_response.content.iter_chunked(CHUNK_SIZE):
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Headers are gone already: all we can do is cut the body so the client sees an error
            # instead of a silently truncated file.
            log.warning("Upstream broke off a response body: %s", type(exc).__name__)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response
