"""History and single events: /messages, /context, /event, /relations, /threads,
/notifications and /search come back with their encrypted events decrypted."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web

from e2eproxy.protocol import rewrite
from e2eproxy.protocol.filters import filter_events, widen_room_event_filter
from e2eproxy.protocol.rewrite import Slot
from e2eproxy.proxy.handlers.common import forward_for_json, respond, token_info, with_filter
from e2eproxy.proxy.handlers.decrypting import decrypt_in_place
from e2eproxy.proxy.handlers.passthrough import passthrough

SlotFinder = Callable[[web.Request, Any], Iterator[Slot]]


def _in_room(find: Callable[[str, Any], Iterator[Slot]]) -> SlotFinder:
    return lambda request, body: find(request.match_info["room"], body)


def _anywhere(find: Callable[[Any], Iterator[Slot]]) -> SlotFinder:
    return lambda request, body: find(body)


def _room_event_filter(request: web.Request) -> dict[str, Any] | None:
    """The client's RoomEventFilter when it filters by type (else there is nothing to adjust)."""
    try:
        parsed = json.loads(request.query.get("filter", ""))
    except ValueError:
        return None
    if isinstance(parsed, dict) and ("types" in parsed or "not_types" in parsed):
        return parsed
    return None


def decrypting(find: SlotFinder, filtered: tuple[str, ...] = ()) -> Callable[[web.Request], Any]:
    """A handler that forwards the request and decrypts the events `find` locates.

    With `filtered` (the answer's event lists a RoomEventFilter applies to), a client filter by
    type is widened to let `m.room.encrypted` through, and applied again after decryption: a
    client asking for `m.room.message` would otherwise get no encrypted message at all.
    """

    async def handler(request: web.Request) -> web.StreamResponse:
        info = await token_info(request)
        if info is None or info.account is None:
            return await passthrough(request)
        client_filter = _room_event_filter(request) if filtered else None
        path = None
        if client_filter is not None:
            widened = widen_room_event_filter(client_filter)
            if widened != client_filter:
                path = with_filter(request, widened)
        answer = await forward_for_json(request, path_and_query=path)
        if answer.status != 200 or not isinstance(answer.data, dict):
            return respond(answer)
        slots = list(find(request, answer.data))
        if slots:
            # Like /sync: a fresh event whose key is still on its way is worth a short wait.
            await decrypt_in_place(request, info.account, slots, wait=True)
        if client_filter is not None:
            for name in filtered:
                if name in answer.data:
                    answer.data[name] = filter_events(answer.data[name], client_filter)
        elif not slots:
            return respond(answer)
        return respond(answer, answer.data)

    return handler


messages = decrypting(_in_room(rewrite.chunk_slots), filtered=("chunk",))
context = decrypting(_in_room(rewrite.context_slots), filtered=("events_before", "events_after"))
event = decrypting(_in_room(rewrite.event_slots))
relations = decrypting(_in_room(rewrite.chunk_slots))
threads = decrypting(_in_room(rewrite.chunk_slots))
notifications = decrypting(_anywhere(rewrite.notification_slots))
search = decrypting(_anywhere(rewrite.search_slots))
