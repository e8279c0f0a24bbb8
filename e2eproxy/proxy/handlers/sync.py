"""/sync: widen the filter, feed the engine, persist, then answer with plaintext events."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from aiohttp import web

from e2eproxy.errors import HomeserverFailed, Unavailable
from e2eproxy.protocol.filters import apply_client_filter, widen_filter
from e2eproxy.protocol.rewrite import strip_crypto_to_device, sync_slots
from e2eproxy.proxy.account import Account
from e2eproxy.proxy.app_keys import UPSTREAM
from e2eproxy.proxy.handlers.common import (
    Answer,
    forward_for_json,
    respond,
    token_info,
    unless_stopping,
    with_filter,
)
from e2eproxy.proxy.handlers.decrypting import decrypt_in_place
from e2eproxy.proxy.handlers.passthrough import passthrough
from e2eproxy.proxy.intake import CLIENT_STREAM, feed_verifications, process_sync
from e2eproxy.proxy.outgoing import call


async def _client_filter(request: web.Request, account: Account) -> dict[str, Any] | None:
    """The filter the client asked for, inline or by id (fetched once and cached)."""
    value = request.query.get("filter")
    if not value:
        return None
    if value.lstrip().startswith("{"):
        try:
            parsed = json.loads(value)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None
    cached = account.filters.get(value)
    if cached is None:
        path = f"/_matrix/client/v3/user/{quote(account.user_id)}/filter/{quote(value)}"
        status, body = await call(request.app[UPSTREAM], account, "GET", path, attempts=1)
        if status != 200 or not isinstance(body, dict):
            return None
        account.filters[value] = cached = body
    return cached


def _stopping_answer(request: web.Request) -> web.Response:
    """The proxy is stopping mid long-poll: an empty sync at the same position (the client just
    syncs again, reaching the restarted proxy), or a retryable error for an initial sync."""
    since = request.query.get("since")
    if since:
        return web.json_response({"next_batch": since})
    raise Unavailable("e2eproxy is restarting; try again")


def unreadable_sync_refused(answer: Answer) -> dict[str, Any] | None:
    """A sync answer's body for the engine; None for an error to pass on as it came. A 200 the
    proxy cannot read (not JSON, not an object, nested past what the parser takes) is refused:
    passed on, it would let the client acknowledge to-device messages (room keys) the engine
    never saw."""
    if answer.status != 200:
        return None
    if not isinstance(answer.data, dict):
        raise HomeserverFailed("e2eproxy could not read the homeserver's sync answer")
    return answer.data


async def sync(request: web.Request) -> web.StreamResponse:
    info = await token_info(request)
    if info is None or info.account is None:
        # No device of ours: plain pass-through keeps working, encrypted events stay encrypted.
        return await passthrough(request)
    account = info.account
    client_filter = await _client_filter(request, account)
    path = None
    if client_filter is not None:
        widened = widen_filter(client_filter)
        if widened != client_filter or not request.query.get("filter", "").startswith("{"):
            path = with_filter(request, widened)
    key_uploads = account.machine.key_uploads
    with account.client_polling():
        answer = await unless_stopping(request, forward_for_json(request, path_and_query=path))
    if answer is None:
        return _stopping_answer(request)
    body = unreadable_sync_refused(answer)
    if body is None:
        return respond(answer)
    await process_sync(account, body, CLIENT_STREAM, initial="since" not in request.query,
                       key_uploads=key_uploads)
    await decrypt_in_place(request, account, list(sync_slots(body)), wait=True)
    await feed_verifications(account, body)
    strip_crypto_to_device(body)
    if client_filter is not None:
        apply_client_filter(body, client_filter)
    return respond(answer, body)
