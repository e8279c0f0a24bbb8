"""The parts of the Matrix filter language the stub honours."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

JsonDict = dict[str, Any]
DEFAULT_TIMELINE_LIMIT = 10


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(pattern).replace(r"\*", ".*") + "$")


def _matches_any(value: str, patterns: list[str]) -> bool:
    return any(_glob(p).match(value) for p in patterns)


@dataclass
class EventFilter:
    types: list[str] | None = None
    not_types: list[str] = field(default_factory=list)
    senders: list[str] | None = None
    not_senders: list[str] = field(default_factory=list)
    limit: int | None = None

    @classmethod
    def parse(cls, raw: JsonDict | None) -> EventFilter:
        raw = raw or {}
        limit = raw.get("limit")
        return cls(
            types=raw.get("types"),
            not_types=list(raw.get("not_types", [])),
            senders=raw.get("senders"),
            not_senders=list(raw.get("not_senders", [])),
            limit=int(limit) if limit is not None else None,
        )

    def allows(self, event: JsonDict) -> bool:
        event_type = str(event.get("type", ""))
        sender = str(event.get("sender", ""))
        if _matches_any(event_type, self.not_types) or sender in self.not_senders:
            return False
        if self.types is not None and not _matches_any(event_type, self.types):
            return False
        return self.senders is None or sender in self.senders


@dataclass
class SyncFilter:
    timeline: EventFilter = field(default_factory=EventFilter)
    state: EventFilter = field(default_factory=EventFilter)
    account_data: EventFilter = field(default_factory=EventFilter)
    room_account_data: EventFilter = field(default_factory=EventFilter)
    rooms: list[str] | None = None
    not_rooms: list[str] = field(default_factory=list)
    include_leave: bool = False

    @classmethod
    def parse(cls, raw: JsonDict | None) -> SyncFilter:
        raw = raw or {}
        room = raw.get("room", {})
        return cls(
            timeline=EventFilter.parse(room.get("timeline")),
            state=EventFilter.parse(room.get("state")),
            account_data=EventFilter.parse(raw.get("account_data")),
            room_account_data=EventFilter.parse(room.get("account_data")),
            rooms=room.get("rooms"),
            not_rooms=list(room.get("not_rooms", [])),
            include_leave=bool(room.get("include_leave", False)),
        )

    @property
    def timeline_limit(self) -> int:
        limit = self.timeline.limit
        return DEFAULT_TIMELINE_LIMIT if limit is None else max(0, limit)

    def allows_room(self, room_id: str) -> bool:
        if room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms
