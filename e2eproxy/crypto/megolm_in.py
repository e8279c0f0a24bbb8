"""Inbound Megolm sessions: a bounded LRU cache over the store, with the better-copy rule.

Every session the engine holds has already been logged for persistence, so evicting one loses
nothing: the store hands it back through ``load``. A session received while the stored copy was
not loaded is *provisional*: ``needed`` keeps asking for it until the store's copy is merged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from e2eproxy.crypto.changes import ChangeLog, InboundGroupSessionRecord, ReplayRecord
from e2eproxy.crypto.replay import ReplayTable
from e2eproxy.types import RoomId, SessionId

DEFAULT_CACHE_SIZE = 10_000
Key = tuple[RoomId, SessionId]


@dataclass(slots=True)
class _Entry:
    record: InboundGroupSessionRecord
    confirmed: bool
    replay: ReplayTable = field(default_factory=ReplayTable)


class InboundSessions:
    """Inbound group sessions by ``(room_id, session_id)``, least recently used evicted first."""

    def __init__(self, log: ChangeLog, capacity: int = DEFAULT_CACHE_SIZE) -> None:
        self._log = log
        self._capacity = max(1, capacity)
        self._cache: OrderedDict[Key, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    def _touch(self, key: Key, entry: _Entry) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)

    def get(self, room_id: RoomId, session_id: SessionId) -> InboundGroupSessionRecord | None:
        entry = self._cache.get((room_id, session_id))
        if entry is None:
            return None
        self._cache.move_to_end((room_id, session_id))
        return entry.record

    def replay_table(self, room_id: RoomId, session_id: SessionId) -> ReplayTable | None:
        entry = self._cache.get((room_id, session_id))
        return None if entry is None else entry.replay

    def needed(self, keys: Iterable[Key]) -> list[Key]:
        """Of ``keys``, those the store should load (absent or provisional), de-duplicated."""
        result: list[Key] = []
        for key in keys:
            entry = self._cache.get(key)
            if (entry is None or not entry.confirmed) and key not in result:
                result.append(key)
        return result

    def load(self, records: Iterable[InboundGroupSessionRecord],
             replay: Iterable[ReplayRecord] = ()) -> None:
        """Accept sessions from the store; a better provisional copy in memory wins."""
        for record in records:
            key = (record.room_id, record.session_id)
            entry = self._cache.get(key)
            if entry is not None and entry.confirmed:
                continue
            if entry is not None and is_better(entry.record, record):
                entry.confirmed = True
                self._touch(key, entry)
                continue
            new_entry = _Entry(record, confirmed=True)
            if entry is not None:
                new_entry.replay = entry.replay
            self._touch(key, new_entry)
        for item in replay:
            table = self.replay_table(item.room_id, item.session_id)
            if table is not None:
                table.load(item)

    def add(self, record: InboundGroupSessionRecord, *, known_absent: bool = False) -> bool:
        """A new copy arrived: keep it if better. True when it was kept (and logged)."""
        key = (record.room_id, record.session_id)
        entry = self._cache.get(key)
        if entry is not None and not is_better(record, entry.record):
            return False
        confirmed = known_absent or (entry is not None and entry.confirmed)
        new_entry = _Entry(record, confirmed=confirmed)
        if entry is not None:
            new_entry.replay = entry.replay
        self._touch(key, new_entry)
        self._log.inbound(record)
        return True


def is_better(new: InboundGroupSessionRecord, old: InboundGroupSessionRecord) -> bool:
    """True when ``new`` should replace ``old``: same keys and a lower first index, or a
    direct (non-imported) copy at the same index replacing an imported one."""
    if new.sender_key != old.sender_key or new.signing_key != old.signing_key:
        return False
    if not connected(new, old):
        return False
    if new.first_known_index != old.first_known_index:
        return new.first_known_index < old.first_known_index
    return old.imported and not new.imported


def connected(a: InboundGroupSessionRecord, b: InboundGroupSessionRecord) -> bool:
    """Both copies are the same ratchet (compared at the later first index)."""
    index = max(a.first_known_index, b.first_known_index)
    export_a, export_b = a.session.export_at(index), b.session.export_at(index)
    return (
        export_a is not None
        and export_b is not None
        and export_a.to_base64() == export_b.to_base64()
    )
