"""What the engine knows about rooms: encryption state, history visibility, members."""

from __future__ import annotations

from typing import Any

from e2eproxy.crypto.changes import ChangeLog, RoomRecord
from e2eproxy.crypto.settings import EncryptionSettings, understood_visibility
from e2eproxy.types import RoomId, UserId

ACTIVE_MEMBERSHIPS = frozenset({"join", "invite"})


class RoomStates:
    """Room records by id; ``encryption`` never goes back to None once set (no downgrade)."""

    def __init__(self, log: ChangeLog) -> None:
        self._log = log
        self.rooms: dict[RoomId, RoomRecord] = {}

    def load(self, records: list[RoomRecord]) -> None:
        for record in records:
            record.history_visibility = understood_visibility(record.history_visibility)
            self.rooms[record.room_id] = record

    def _get(self, room_id: RoomId) -> RoomRecord:
        record = self.rooms.get(room_id)
        if record is None:
            record = RoomRecord(room_id, None, "shared", {})
            self.rooms[room_id] = record
        return record

    def is_encrypted(self, room_id: RoomId) -> bool:
        record = self.rooms.get(room_id)
        return record is not None and record.encryption is not None

    def settings(self, room_id: RoomId) -> EncryptionSettings | None:
        record = self.rooms.get(room_id)
        if record is None or record.encryption is None:
            return None
        return EncryptionSettings.from_content(record.encryption, record.history_visibility)

    def set_encryption(self, room_id: RoomId, content: Any) -> bool:
        """Apply ``m.room.encryption`` content; True when the settings changed."""
        if not isinstance(content, dict) or not isinstance(content.get("algorithm"), str):
            return False
        record = self._get(room_id)
        if record.encryption == content:
            return False
        record.encryption = dict(content)
        self._log.room(record)
        return True

    def set_history_visibility(self, room_id: RoomId, visibility: Any) -> bool:
        """Apply an ``m.room.history_visibility`` value (see ``understood_visibility``)."""
        visibility = understood_visibility(visibility)
        record = self._get(room_id)
        if record.history_visibility == visibility:
            return False
        record.history_visibility = visibility
        self._log.room(record)
        return True

    def set_membership(self, room_id: RoomId, user_id: UserId, membership: str) -> str | None:
        """Record a membership; returns the previous one (None when unknown or unchanged)."""
        record = self._get(room_id)
        previous = record.members.get(user_id)
        if previous == membership:
            return None
        record.members[user_id] = membership
        self._log.room(record)
        return previous or "unknown"

    def active_members(self, room_id: RoomId) -> list[UserId]:
        record = self.rooms.get(room_id)
        if record is None:
            return []
        return [u for u, m in record.members.items() if m in ACTIVE_MEMBERSHIPS]

    def recipients(self, room_id: RoomId) -> list[UserId]:
        """Who gets the room key: joined members, and invited ones unless the history is only
        for those who joined (an invitee must not read what is said before it joins)."""
        record = self.rooms.get(room_id)
        if record is None:
            return []
        allowed = {"join"} if record.history_visibility == "joined" else ACTIVE_MEMBERSHIPS
        return [u for u, m in record.members.items() if m in allowed]

    def direct_room(self, me: UserId, other: UserId) -> RoomId | None:
        """An encrypted room whose joined members are exactly us and ``other`` (a DM, where an
        in-room verification with ``other`` goes)."""
        for room_id, record in self.rooms.items():
            joined = {u for u, m in record.members.items() if m == "join"}
            if record.encryption is not None and joined == {me, other}:
                return room_id
        return None
