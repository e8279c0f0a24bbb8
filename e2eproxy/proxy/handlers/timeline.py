"""History and single events: /messages, /context, /event, /relations, /threads and
/notifications come back with their encrypted events decrypted (/search: see ``search``)."""

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


# What to ask the server instead of the client's request (None: the same), and the type filter
# to apply to the decrypted answer (None: no filtering).
Adjustment = tuple[str | None, dict[str, Any] | None]


def _room_event_filter(request: web.Request) -> Adjustment:
    """/messages and /context take a RoomEventFilter: one by type is widened to let
    `m.room.encrypted` through, then applied again after decryption."""
    try:
        parsed = json.loads(request.query.get("filter", ""))
    except ValueError:
        return None, None
    if not (isinstance(parsed, dict) and ("types" in parsed or "not_types" in parsed)):
        return None, None
    widened = widen_room_event_filter(parsed)
    return (with_filter(request, widened) if widened != parsed else None), parsed


def _relations_by_type(request: web.Request) -> Adjustment:
    """/relations/{event}/{rel_type}/{event_type}: the server matches `event_type` against the
    outer type, `m.room.encrypted` for every encrypted relation. Ask for the relation type
    alone and keep the events of the wanted type once decrypted."""
    event_type = request.match_info.get("event_type")
    if event_type is None:
        return None, None
    raw_path, _, query = request.raw_path.partition("?")
    wider = raw_path.rsplit("/", 1)[0]
    return (f"{wider}?{query}" if query else wider), {"types": [event_type]}


def decrypting(
    find: SlotFinder,
    filtered: tuple[str, ...] = (),
    adjust: Callable[[web.Request], Adjustment] = lambda request: (None, None),
) -> Callable[[web.Request], Any]:
    """A handler that forwards the request and decrypts the events `find` locates.

    `adjust` may widen the request where the server would filter by type (it only knows the
    encrypted events as `m.room.encrypted`); its type filter then applies to the answer's lists
    named in `filtered`, once decrypted.
    """

    async def handler(request: web.Request) -> web.StreamResponse:
        info = await token_info(request)
        if info is None or info.account is None:
            return await passthrough(request)
        path, client_filter = adjust(request)
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


messages = decrypting(_in_room(rewrite.chunk_slots), ("chunk",), _room_event_filter)
context = decrypting(
    _in_room(rewrite.context_slots), ("events_before", "events_after"), _room_event_filter
)
event = decrypting(_in_room(rewrite.event_slots))
relations = decrypting(_in_room(rewrite.chunk_slots), ("chunk",), _relations_by_type)
threads = decrypting(_in_room(rewrite.chunk_slots))
notifications = decrypting(_anywhere(rewrite.notification_slots))
