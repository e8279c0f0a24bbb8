"""Rooms and their events: the raw history a test can inspect, current state, membership."""

from __future__ import annotations

import bisect
import copy
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .accounts import now_ms
from .errors import forbidden, not_found
from .stream import Stream

JsonDict = dict[str, Any]
StateKey = tuple[str, str]

# Content keys kept by redaction (room version 11 rules, close enough for older versions).
_REDACTION_KEEP: dict[str, set[str] | None] = {
    "m.room.member": {"membership", "join_authorised_via_users_server"},
    "m.room.create": None,
    "m.room.join_rules": {"join_rule", "allow"},
    "m.room.power_levels": {
        "ban", "events", "events_default", "invite", "kick", "redact", "state_default",
        "users", "users_default",
    },
    "m.room.history_visibility": {"history_visibility"},
    "m.room.redaction": {"redacts"},
}


@dataclass
class StoredEvent:
    """One event exactly as the server holds it, plus who sent it from which device."""

    event: JsonDict
    position: int
    sender_device: str | None = None
    txn_id: str | None = None

    @property
    def event_id(self) -> str:
        return str(self.event["event_id"])

    @property
    def type(self) -> str:
        return str(self.event["type"])

    @property
    def sender(self) -> str:
        return str(self.event["sender"])

    @property
    def state_key(self) -> str | None:
        key = self.event.get("state_key")
        return None if key is None else str(key)

    @property
    def content(self) -> JsonDict:
        content: JsonDict = self.event["content"]
        return content

    def relates_to(self) -> JsonDict | None:
        relation = self.content.get("m.relates_to")
        return relation if isinstance(relation, dict) else None

    def for_client(self, user_id: str, device_id: str, with_room_id: bool = True) -> JsonDict:
        """The client-format copy; ``transaction_id`` only for the device that sent it."""
        event = copy.deepcopy(self.event)
        if not with_room_id:
            event.pop("room_id", None)
        unsigned = event.setdefault("unsigned", {})
        unsigned["age"] = max(0, now_ms() - int(event["origin_server_ts"]))
        if self.txn_id and self.sender == user_id and self.sender_device == device_id:
            unsigned["transaction_id"] = self.txn_id
        return event

    def stripped(self) -> JsonDict:
        return {
            "type": self.type, "state_key": self.state_key, "content": self.content,
            "sender": self.sender,
        }


@dataclass
class Room:
    room_id: str
    version: str = "10"
    events: list[StoredEvent] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    state: dict[StateKey, StoredEvent] = field(default_factory=dict)
    by_id: dict[str, StoredEvent] = field(default_factory=dict)

    def state_content(self, event_type: str, state_key: str = "") -> JsonDict | None:
        event = self.state.get((event_type, state_key))
        return None if event is None else event.content

    def membership(self, user_id: str) -> str | None:
        content = self.state_content("m.room.member", user_id)
        return None if content is None else content.get("membership")

    def members(self, membership: str = "join") -> list[str]:
        return [
            key for (etype, key), ev in self.state.items()
            if etype == "m.room.member" and ev.content.get("membership") == membership
        ]

    def power_level(self, user_id: str) -> int:
        levels = self.state_content("m.room.power_levels") or {}
        return int(levels.get("users", {}).get(user_id, levels.get("users_default", 0)))

    def required_level(self, action: str, default: int = 50) -> int:
        levels = self.state_content("m.room.power_levels") or {}
        return int(levels.get(action, default))

    def required_event_level(self, event_type: str, is_state: bool) -> int:
        levels = self.state_content("m.room.power_levels") or {}
        if event_type in levels.get("events", {}):
            return int(levels["events"][event_type])
        if is_state:
            return int(levels.get("state_default", 50))
        return int(levels.get("events_default", 0))

    def events_between(self, after: int, upto: int) -> list[StoredEvent]:
        """Events with ``after < position <= upto``, oldest first."""
        lo = bisect.bisect_right(self.positions, after)
        hi = bisect.bisect_right(self.positions, upto)
        return self.events[lo:hi]

    def state_at(self, position: int) -> dict[StateKey, StoredEvent]:
        """Room state after every event at or before ``position``."""
        state: dict[StateKey, StoredEvent] = {}
        for stored in self.events_between(-1, position):
            if stored.state_key is not None:
                state[(stored.type, stored.state_key)] = stored
        return state

    def membership_at(self, user_id: str, position: int) -> str | None:
        membership = None
        for stored in self.events_between(-1, position):
            if stored.type == "m.room.member" and stored.state_key == user_id:
                membership = stored.content.get("membership")
        return membership

    def visible_until(self, user_id: str) -> int:
        """The last position this user may read: now if joined, their leave if they left."""
        if self.membership(user_id) == "join":
            return self.positions[-1] if self.positions else 0
        last_join = None
        for stored in self.events:
            if stored.type == "m.room.member" and stored.state_key == user_id:
                if stored.content.get("membership") == "join":
                    last_join = stored.position
                elif last_join is not None:
                    return stored.position
        raise forbidden(f"User {user_id} not in room {self.room_id}")


class RoomStore:
    def __init__(self, server_name: str, stream: Stream) -> None:
        self.server_name = server_name
        self.stream = stream
        self.rooms: dict[str, Room] = {}
        self.aliases: dict[str, str] = {}

    def new_room(self) -> Room:
        room = Room(room_id=f"!{secrets.token_urlsafe(12)}:{self.server_name}")
        self.rooms[room.room_id] = room
        return room

    def room(self, room_id_or_alias: str) -> Room:
        room_id = self.aliases.get(room_id_or_alias, room_id_or_alias)
        room = self.rooms.get(room_id)
        if room is None:
            raise not_found(f"Unknown room {room_id_or_alias}")
        return room

    def rooms_of(self, user_id: str) -> Iterable[Room]:
        """Rooms in which the user has ever had a membership event."""
        for room in self.rooms.values():
            if any(
                ev.type == "m.room.member" and ev.state_key == user_id for ev in room.events
            ):
                yield room

    def joined_rooms(self, user_id: str) -> list[str]:
        return [r.room_id for r in self.rooms.values() if r.membership(user_id) == "join"]

    def share_room(self, user_a: str, user_b: str) -> bool:
        return user_a == user_b or any(
            r.membership(user_a) == "join" and r.membership(user_b) == "join"
            for r in self.rooms.values()
        )

    def find_event(self, event_id: str) -> StoredEvent | None:
        for room in self.rooms.values():
            if event_id in room.by_id:
                return room.by_id[event_id]
        return None

    def append(
        self, room: Room, sender: str, event_type: str, content: JsonDict, *,
        state_key: str | None = None, device_id: str | None = None,
        txn_id: str | None = None, extra: JsonDict | None = None,
    ) -> StoredEvent:
        """Store a new event at the next stream position. The caller notifies the stream."""
        event: JsonDict = {
            "event_id": f"${secrets.token_urlsafe(32)}",
            "room_id": room.room_id,
            "type": event_type,
            "sender": sender,
            "origin_server_ts": now_ms(),
            "content": copy.deepcopy(content),
            "unsigned": {},
            **(extra or {}),
        }
        if state_key is not None:
            event["state_key"] = state_key
            previous = room.state.get((event_type, state_key))
            if previous is not None:
                event["unsigned"]["replaces_state"] = previous.event_id
                event["unsigned"]["prev_content"] = copy.deepcopy(previous.content)
        stored = StoredEvent(event, self.stream.advance(), device_id, txn_id)
        room.events.append(stored)
        room.positions.append(stored.position)
        room.by_id[stored.event_id] = stored
        if state_key is not None:
            room.state[(event_type, state_key)] = stored
        return stored

    @staticmethod
    def redact(target: StoredEvent, redaction: StoredEvent) -> None:
        """Strip the target's content in place, as the server's stored copy is pruned."""
        keep = _REDACTION_KEEP.get(target.type, set())
        if keep is not None:
            target.event["content"] = {k: v for k, v in target.content.items() if k in keep}
        unsigned = {"redacted_because": copy.deepcopy(redaction.event)}
        target.event["unsigned"] = unsigned
