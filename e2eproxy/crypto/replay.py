"""Megolm replay protection: one ``(event_id, origin_server_ts)`` per message index.

Kept per inbound session (so it is loaded and evicted with it). Decrypting the same event again
is fine; the same index under another event is a replay.
"""

from __future__ import annotations

import enum

from e2eproxy.crypto.changes import ReplayRecord


class ReplayVerdict(enum.Enum):
    NEW = "new"
    SEEN_SAME_EVENT = "seen_same_event"
    REPLAYED = "replayed"


class ReplayTable:
    """Message index -> (event_id, origin_server_ts) for one session."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[int, tuple[str, int]] = {}

    def load(self, record: ReplayRecord) -> None:
        self._seen[record.message_index] = (record.event_id, record.origin_server_ts)

    def check(self, index: int, event_id: str, origin_server_ts: int) -> ReplayVerdict:
        seen = self._seen.get(index)
        if seen is None:
            return ReplayVerdict.NEW
        if seen == (event_id, origin_server_ts):
            return ReplayVerdict.SEEN_SAME_EVENT
        return ReplayVerdict.REPLAYED

    def record(self, index: int, event_id: str, origin_server_ts: int) -> None:
        self._seen[index] = (event_id, origin_server_ts)
