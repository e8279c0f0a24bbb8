"""History and single events: /messages, /context, /event, /relations, /threads,
/notifications and /search come back with their encrypted events decrypted."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web

from e2eproxy.protocol import rewrite
from e2eproxy.protocol.rewrite import Slot
from e2eproxy.proxy.handlers.common import forward_for_json, respond, token_info
from e2eproxy.proxy.handlers.decrypting import decrypt_in_place
from e2eproxy.proxy.handlers.passthrough import passthrough

SlotFinder = Callable[[web.Request, Any], Iterator[Slot]]


def _in_room(find: Callable[[str, Any], Iterator[Slot]]) -> SlotFinder:
    return lambda request, body: find(request.match_info["room"], body)


def _anywhere(find: Callable[[Any], Iterator[Slot]]) -> SlotFinder:
    return lambda request, body: find(body)


def decrypting(find: SlotFinder) -> Callable[[web.Request], Any]:
    """A handler that forwards the request and decrypts the events `find` locates."""

    async def handler(request: web.Request) -> web.StreamResponse:
        info = await token_info(request)
        if info is None or info.account is None:
            return await passthrough(request)
        answer = await forward_for_json(request)
        if answer.status != 200 or answer.data is None:
            return respond(answer)
        slots = list(find(request, answer.data))
        if not slots:
            return respond(answer)
        # Like /sync: a fresh event whose key is still on its way is worth a short wait.
        await decrypt_in_place(request, info.account, slots, wait=True)
        return respond(answer, answer.data)

    return handler


messages = decrypting(_in_room(rewrite.chunk_slots))
context = decrypting(_in_room(rewrite.context_slots))
event = decrypting(_in_room(rewrite.event_slots))
relations = decrypting(_in_room(rewrite.chunk_slots))
threads = decrypting(_in_room(rewrite.chunk_slots))
notifications = decrypting(_anywhere(rewrite.notification_slots))
search = decrypting(_anywhere(rewrite.search_slots))
