"""Sync filters: widen the client's filter so encrypted and crypto-relevant events reach the proxy,
then apply the client's own type filters to the decrypted result.

A plain client that asks for `types: ["m.room.message"]` would otherwise never receive the
`m.room.encrypted` events that hold its messages, nor the state the engine needs.
"""

from __future__ import annotations

import copy
import fnmatch
from typing import Any

from e2eproxy.protocol.rewrite import sync_room_parts

ENCRYPTED = "m.room.encrypted"
CRYPTO_STATE = ("m.room.encryption", "m.room.member", "m.room.history_visibility")
_EVENT_SECTIONS = ("timeline", "state")


def _matches(event_type: str, patterns: list[Any]) -> bool:
    # Matrix filter patterns: '*' is the only wildcard; fnmatch's [] and ? never occur in types.
    return any(isinstance(p, str) and fnmatch.fnmatchcase(event_type, p) for p in patterns)


def _widen_section(section: dict[str, Any], needed: tuple[str, ...]) -> None:
    types = section.get("types")
    if isinstance(types, list):
        section["types"] = types + [t for t in needed if not _matches(t, types)]
    not_types = section.get("not_types")
    if isinstance(not_types, list):
        section["not_types"] = [
            t
            for t in not_types
            if not any(isinstance(t, str) and fnmatch.fnmatchcase(n, t) for n in needed)
        ]


def widen_filter(client_filter: dict[str, Any]) -> dict[str, Any]:
    """The filter to send upstream: the client's, minus anything that hides what crypto needs."""
    upstream = copy.deepcopy(client_filter)
    # Projection would strip the ciphertext; it is applied after decryption instead.
    upstream.pop("event_fields", None)
    room = upstream.get("room")
    if isinstance(room, dict):
        for name in _EVENT_SECTIONS:
            section = room.get(name)
            if isinstance(section, dict):
                _widen_section(section, (ENCRYPTED, *CRYPTO_STATE))
    return upstream


def widen_room_event_filter(client_filter: dict[str, Any]) -> dict[str, Any]:
    """A RoomEventFilter (/messages, /context) that lets the encrypted events through."""
    upstream = copy.deepcopy(client_filter)
    _widen_section(upstream, (ENCRYPTED,))
    return upstream


def filter_events(events: Any, client_filter: dict[str, Any]) -> Any:
    """The client's own `types`/`not_types`, applied to decrypted events."""
    if not isinstance(events, list):
        return events
    return [e for e in events if _allowed(e, client_filter)]


def _allowed(event: Any, section: dict[str, Any]) -> bool:
    event_type = event.get("type") if isinstance(event, dict) else None
    if not isinstance(event_type, str):
        return True
    types = section.get("types")
    if isinstance(types, list) and not _matches(event_type, types):
        return False
    not_types = section.get("not_types")
    return not (isinstance(not_types, list) and _matches(event_type, not_types))


def _project(event: Any, fields: list[str]) -> Any:
    """`event_fields`: keep only the listed dotted paths ('\\.' escapes a dot in a key)."""
    if not isinstance(event, dict):
        return event
    result: dict[str, Any] = {}
    for field in fields:
        parts = [p.replace("\0", ".") for p in field.replace("\\.", "\0").split(".")]
        source: Any = event
        for part in parts:
            source = source.get(part) if isinstance(source, dict) else None
            if source is None:
                break
        if source is None:
            continue
        target = result
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = source
    return result


def apply_client_filter(body: Any, client_filter: dict[str, Any]) -> None:
    """Apply the client's own type filters and projection to a /sync body, in place."""
    room = client_filter.get("room")
    fields = client_filter.get("event_fields")
    project = isinstance(fields, list) and all(isinstance(f, str) for f in fields)
    for _, name, part in sync_room_parts(body):
        events = part["events"]
        rules = room.get(name) if isinstance(room, dict) else None
        if isinstance(rules, dict):
            events = [e for e in events if _allowed(e, rules)]
        if project:
            assert isinstance(fields, list)
            events = [_project(e, fields) for e in events]
        part["events"] = events
