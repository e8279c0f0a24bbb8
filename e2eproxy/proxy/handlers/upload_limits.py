"""How large a file the proxy holds: the homeserver's `m.upload.size` and the operator's
`max_upload_size`, whichever is smaller, checked on the announced length and again on every
byte that arrives (a held upload sits in the data dir until an event uses it)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import web

from e2eproxy.errors import MatrixError, TooLarge
from e2eproxy.proxy.account import Account
from e2eproxy.proxy.app_keys import MEDIA, SERVER, UPSTREAM
from e2eproxy.proxy.outgoing import call

UPLOAD_LIMIT_TTL_S = 3600.0


async def upload_limit(request: web.Request, account: Account) -> int:
    """The smaller of the server's `m.upload.size` (asked once an hour) and our own limit."""
    configured = request.app[SERVER].max_upload_size
    server = await _server_limit(request, account)
    return configured if server is None else min(server, configured)


async def _server_limit(request: web.Request, account: Account) -> int | None:
    media = request.app[MEDIA].of(account)
    if time.monotonic() - media.upload_limit_at < UPLOAD_LIMIT_TTL_S:
        return media.upload_limit
    limit = None
    for path in ("/_matrix/client/v1/media/config", "/_matrix/media/v3/config"):
        status, body = await call(request.app[UPSTREAM], account, "GET", path, attempts=1)
        if status == 200 and isinstance(body, dict):
            size = body.get("m.upload.size")
            limit = size if isinstance(size, int) and size > 0 else None
            break
    media.upload_limit, media.upload_limit_at = limit, time.monotonic()
    return limit


def too_large(limit: int) -> MatrixError:
    return TooLarge(f"Cannot upload files larger than {limit} bytes")


async def within(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise too_large(limit)  # the spool file is removed; nothing was reserved in vain
        yield chunk


async def check_size(request: web.Request, account: Account) -> int:
    """A held upload is only sent at send time: refuse one the server would refuse then, now,
    as the server itself would (413 M_TOO_LARGE)."""
    limit = await upload_limit(request, account)
    length = request.content_length
    if length is not None and length > limit:
        raise too_large(limit)
    return limit
