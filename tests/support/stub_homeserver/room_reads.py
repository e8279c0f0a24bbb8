"""Room reads: state, members, /messages, /context, /event, /relations, /joined_rooms, /search.

Pagination tokens are stream positions (``s<N>``); a member who left reads up to their leave.
"""

from __future__ import annotations

import json

from aiohttp import web

from .common import JsonDict, client_routes, int_param, ok, session_of, stub_of
from .errors import bad_json, bad_json_field, invalid_param, not_found
from .filters import EventFilter
from .roomstore import Room, StoredEvent
from .stream import parse_token

RELATIONS_RECURSION_DEPTH = 3


def _dir(request: web.Request, default: str) -> str:
    direction = request.query.get("dir", default)
    if direction not in ("b", "f"):
        raise invalid_param("dir must be 'b' or 'f'")
    return direction


def _event_filter(request: web.Request) -> tuple[EventFilter, bool]:
    raw = request.query.get("filter")
    if not raw:
        return EventFilter(), False
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise bad_json("filter is not valid JSON") from None
    return EventFilter.parse(parsed), bool(parsed.get("lazy_load_members"))


def _paginate(
    events: list[StoredEvent], direction: str, start: int | None, stop: int | None, limit: int,
) -> tuple[list[StoredEvent], int, int | None]:
    """Page through position-ordered ``events``; returns (page, from, next token or None)."""
    if direction == "b":
        frm = start if start is not None else (events[-1].position if events else 0)
        candidates = [ev for ev in reversed(events)
                      if ev.position <= frm and (stop is None or ev.position > stop)]
        page = candidates[:limit]
        nxt = page[-1].position - 1 if len(candidates) > len(page) else None
    else:
        frm = start if start is not None else 0
        candidates = [ev for ev in events
                      if ev.position > frm and (stop is None or ev.position <= stop)]
        page = candidates[:limit]
        nxt = page[-1].position if len(candidates) > len(page) else None
    return page, frm, nxt


def _token(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    return None if raw is None else parse_token(raw, name)


async def messages(request: web.Request) -> web.Response:
    session = session_of(request)
    stub = stub_of(request)
    room = stub.room(request.match_info["room_id"])
    visible = room.visible_until(session.user_id)
    flt, lazy_members = _event_filter(request)
    events = [ev for ev in room.events_between(-1, visible) if flt.allows(ev.event)]
    start = _token(request, "from")
    if start is not None:
        start = min(start, visible)
    page, frm, nxt = _paginate(
        events, _dir(request, "f"), start, _token(request, "to"),
        max(0, int_param(request, "limit", 10)),
    )
    user, device = session.user_id, session.device_id
    body: JsonDict = {
        "chunk": [ev.for_client(user, device) for ev in page],
        "start": stub.stream.token(frm),
    }
    if nxt is not None:
        body["end"] = stub.stream.token(nxt)
    if lazy_members:
        senders = {ev.sender for ev in page}
        state = room.state_at(visible)
        body["state"] = [state[("m.room.member", s)].for_client(user, device)
                         for s in sorted(senders) if ("m.room.member", s) in state]
    return ok(body)


def _visible_event(room: Room, user_id: str, event_id: str) -> StoredEvent:
    visible = room.visible_until(user_id)
    stored = room.by_id.get(event_id)
    if stored is None or stored.position > visible:
        raise not_found("Event not found.")
    return stored


async def context(request: web.Request) -> web.Response:
    session = session_of(request)
    stub = stub_of(request)
    room = stub.room(request.match_info["room_id"])
    target = _visible_event(room, session.user_id, request.match_info["event_id"])
    visible = room.visible_until(session.user_id)
    flt, _ = _event_filter(request)
    limit = max(0, int_param(request, "limit", 10))
    before_limit = limit // 2
    after_limit = limit - before_limit
    before = [ev for ev in reversed(room.events_between(-1, target.position - 1))
              if flt.allows(ev.event)][:before_limit]
    after = [ev for ev in room.events_between(target.position, visible)
             if flt.allows(ev.event)][:after_limit]
    user, device = session.user_id, session.device_id
    start = (before[-1].position if before else target.position) - 1
    end = after[-1].position if after else target.position
    return ok({
        "event": target.for_client(user, device),
        "events_before": [ev.for_client(user, device) for ev in before],
        "events_after": [ev.for_client(user, device) for ev in after],
        "start": stub.stream.token(start),
        "end": stub.stream.token(end),
        "state": [ev.for_client(user, device) for ev in room.state_at(target.position).values()],
    })


async def event(request: web.Request) -> web.Response:
    session = session_of(request)
    room = stub_of(request).room(request.match_info["room_id"])
    stored = _visible_event(room, session.user_id, request.match_info["event_id"])
    return ok(stored.for_client(session.user_id, session.device_id))


def _children(room: Room, parents: set[str], rel_type: str | None) -> list[StoredEvent]:
    found = []
    for ev in room.events:
        relation = ev.relates_to()
        if relation and relation.get("event_id") in parents and (
            rel_type is None or relation.get("rel_type") == rel_type
        ):
            found.append(ev)
    return found


async def relations(request: web.Request) -> web.Response:
    session = session_of(request)
    stub = stub_of(request)
    room = stub.room(request.match_info["room_id"])
    parent = _visible_event(room, session.user_id, request.match_info["event_id"])
    visible = room.visible_until(session.user_id)
    rel_type = request.match_info.get("rel_type")
    event_type = request.match_info.get("event_type")
    recurse = request.query.get("recurse", "false").lower() == "true"
    found: dict[str, StoredEvent] = {}
    parents = {parent.event_id}
    for _ in range(RELATIONS_RECURSION_DEPTH if recurse else 1):
        children = [ev for ev in _children(room, parents, rel_type) if ev.event_id not in found]
        found.update({ev.event_id: ev for ev in children})
        parents = {ev.event_id for ev in children}
    events = sorted(
        (ev for ev in found.values()
         if ev.position <= visible and (event_type is None or ev.type == event_type)),
        key=lambda ev: ev.position,
    )
    page, _, nxt = _paginate(
        events, _dir(request, "b"), _token(request, "from"), _token(request, "to"),
        max(0, int_param(request, "limit", 50)),
    )
    body: JsonDict = {"chunk": [ev.for_client(session.user_id, session.device_id) for ev in page]}
    if nxt is not None:
        body["next_batch"] = stub.stream.token(nxt)
    if recurse:
        body["recursion_depth"] = RELATIONS_RECURSION_DEPTH
    return ok(body)


async def room_state(request: web.Request) -> web.Response:
    session = session_of(request)
    room = stub_of(request).room(request.match_info["room_id"])
    state = room.state_at(room.visible_until(session.user_id))
    events = sorted(state.values(), key=lambda ev: ev.position)
    return ok([ev.for_client(session.user_id, session.device_id) for ev in events])


async def members(request: web.Request) -> web.Response:
    session = session_of(request)
    room = stub_of(request).room(request.match_info["room_id"])
    state = room.state_at(room.visible_until(session.user_id))
    wanted = request.query.get("membership")
    unwanted = request.query.get("not_membership")
    chunk = [
        ev.for_client(session.user_id, session.device_id)
        for (etype, _), ev in state.items()
        if etype == "m.room.member"
        and (wanted is None or ev.content.get("membership") == wanted)
        and (unwanted is None or ev.content.get("membership") != unwanted)
    ]
    return ok({"chunk": chunk})


async def joined_members(request: web.Request) -> web.Response:
    session = session_of(request)
    room = stub_of(request).room(request.match_info["room_id"])
    state = room.state_at(room.visible_until(session.user_id))
    joined = {
        key: {"display_name": ev.content.get("displayname"),
              "avatar_url": ev.content.get("avatar_url")}
        for (etype, key), ev in state.items()
        if etype == "m.room.member" and ev.content.get("membership") == "join"
    }
    return ok({"joined": joined})


async def joined_rooms(request: web.Request) -> web.Response:
    session = session_of(request)
    return ok({"joined_rooms": stub_of(request).rooms.joined_rooms(session.user_id)})


async def search(request: web.Request) -> web.Response:
    """Server-side search as Synapse does it: the term matched against the ``body`` of the
    (plaintext) messages of the rooms the user is in, or of ``filter.rooms`` among them."""
    session = session_of(request)
    stub = stub_of(request)
    try:
        body = json.loads(await request.read())
        criteria = body["search_categories"]["room_events"]
        term = criteria["search_term"]
    except (ValueError, KeyError, TypeError):
        raise bad_json_field("search_categories.room_events.search_term is required") from None
    flt = criteria.get("filter") or {}
    rooms = stub.rooms.joined_rooms(session.user_id)
    if isinstance(flt.get("rooms"), list):
        rooms = [r for r in rooms if r in flt["rooms"]]
    rooms = [r for r in rooms if r not in (flt.get("not_rooms") or [])]
    results = []
    for room_id in rooms:
        room = stub.room(room_id)
        for ev in room.events_between(-1, room.visible_until(session.user_id)):
            text = ev.content.get("body")
            if ev.type == "m.room.message" and isinstance(text, str) and term.lower() in (
                text.lower()
            ):
                results.append({"rank": 1.0,
                                "result": ev.for_client(session.user_id, session.device_id)})
    return ok({"search_categories": {"room_events": {
        "results": results, "count": len(results), "highlights": [term],
    }}})


def routes() -> list[web.RouteDef]:
    rel = "/rooms/{room_id}/relations/{event_id}"
    return client_routes([
        ("GET", "/rooms/{room_id}/state", room_state),
        ("GET", "/rooms/{room_id}/members", members),
        ("GET", "/rooms/{room_id}/joined_members", joined_members),
        ("GET", "/rooms/{room_id}/messages", messages),
        ("GET", "/rooms/{room_id}/context/{event_id}", context),
        ("GET", "/rooms/{room_id}/event/{event_id}", event),
        ("GET", "/joined_rooms", joined_rooms),
        ("POST", "/search", search),
    ]) + client_routes([
        ("GET", rel, relations),
        ("GET", rel + "/{rel_type}", relations),
        ("GET", rel + "/{rel_type}/{event_type}", relations),
    ], prefixes=("/_matrix/client/v1",))
