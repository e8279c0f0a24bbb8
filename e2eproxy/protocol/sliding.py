"""Simplified sliding sync (MSC4186): where its answers carry what the engine needs, and where
encrypted events sit in them. Pure functions over parsed JSON, like `rewrite`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from e2eproxy.protocol.rewrite import Slot, _list_slots, is_crypto_to_device

PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"


def _dict(value: Any, key: str) -> dict[str, Any]:
    found = value.get(key) if isinstance(value, dict) else None
    return found if isinstance(found, dict) else {}


def extension_enabled(request_body: Any, name: str) -> bool:
    return _dict(_dict(request_body, "extensions"), name).get("enabled") is True


def as_sync_body(body: Any) -> dict[str, Any]:
    """The answer in `/sync` v2 shape, for the engine: to-device events (the `to_device`
    extension), device lists and key counts (the `e2ee` extension), and each room's timeline
    and required state. No `next_batch`: the sliding position is not a v2 token."""
    extensions = _dict(body, "extensions")
    to_device = _dict(extensions, "to_device").get("events")
    e2ee = _dict(extensions, "e2ee")
    rooms = {}
    for room_id, room in _dict(body, "rooms").items():
        if not isinstance(room, dict):
            continue
        timeline, state = room.get("timeline"), room.get("required_state")
        rooms[room_id] = {
            "timeline": {"events": timeline if isinstance(timeline, list) else []},
            "state": {"events": state if isinstance(state, list) else []},
        }
    v2: dict[str, Any] = {
        "to_device": {"events": to_device if isinstance(to_device, list) else []},
        "rooms": {"join": rooms},
    }
    for key in ("device_lists", "device_one_time_keys_count", "device_unused_fallback_key_types"):
        if key in e2ee:
            v2[key] = e2ee[key]
    return v2


def sliding_slots(body: Any) -> Iterator[Slot]:
    """The encrypted events of every room's timeline."""
    for room_id, room in _dict(body, "rooms").items():
        if isinstance(room, dict):
            yield from _list_slots(room_id, room.get("timeline"))


def strip_crypto_to_device(body: Any) -> None:
    """Remove the crypto layer's to-device events from the `to_device` extension, in place."""
    to_device = _dict(_dict(body, "extensions"), "to_device")
    if isinstance(to_device.get("events"), list):
        to_device["events"] = [e for e in to_device["events"] if not is_crypto_to_device(e)]
