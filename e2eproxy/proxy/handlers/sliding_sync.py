"""Simplified sliding sync (MSC4186): feed the engine, persist, then answer with plaintext events.

The same order as `/sync`. With its `to_device` and `e2ee` extensions on, this stream carries the
keys, so the background sync steps aside while it long-polls (as for `/sync`); without them it
keeps running, since nothing else would bring the room keys in.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from aiohttp import web

from e2eproxy.errors import Unavailable
from e2eproxy.protocol import sliding
from e2eproxy.proxy.handlers.common import forward_for_json, respond, token_info, unless_stopping
from e2eproxy.proxy.handlers.decrypting import decrypt_in_place
from e2eproxy.proxy.handlers.passthrough import passthrough
from e2eproxy.proxy.handlers.sync import unreadable_sync_refused
from e2eproxy.proxy.intake import CLIENT_STREAM, process_sync


async def sync(request: web.Request) -> web.StreamResponse:
    info = await token_info(request)
    if info is None or info.account is None:
        return await passthrough(request)
    account = info.account
    raw = await request.read()
    try:
        wanted: Any = json.loads(raw) if raw else {}
    except ValueError:
        wanted = None  # the server answers a bad body itself
    carries_keys = sliding.extension_enabled(wanted, "to_device") and (
        sliding.extension_enabled(wanted, "e2ee")
    )
    polling = account.client_polling() if carries_keys else contextlib.nullcontext()
    key_uploads = account.machine.key_uploads
    with polling:
        answer = await unless_stopping(request, forward_for_json(request, body=raw))
    if answer is None:
        raise Unavailable("e2eproxy is restarting; try again")
    body = unreadable_sync_refused(answer)
    if body is None:
        return respond(answer)
    await process_sync(account, sliding.as_sync_body(body), CLIENT_STREAM,
                       initial="pos" not in request.query, key_uploads=key_uploads)
    await decrypt_in_place(request, account, list(sliding.sliding_slots(body)), wait=True)
    sliding.strip_crypto_to_device(body)
    return respond(answer, body)
