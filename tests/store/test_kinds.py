"""Every list of engine records a batch can hold is written by the store, and every list a
restore needs is read back: through the kind registry, or one of the few special rows."""

from __future__ import annotations

import dataclasses

from e2eproxy.crypto.changes import ChangeLog, Changes, EngineSnapshot, WithheldRecord
from e2eproxy.store import kinds
from e2eproxy.store.txn import plan_changes
from e2eproxy.types import RoomId, SessionId

# Written out by hand in txn.plan_changes / records.load_snapshot (not plain upserts).
SPECIAL_CHANGES = {"account", "requests_removed", "to_device_hashes"}
SPECIAL_SNAPSHOT = {"account", "to_device_hashes"}
ON_DEMAND = {"inbound_group_sessions", "replay_entries"}  # loaded when events need them


def test_every_field_of_a_batch_is_stored() -> None:
    registered = {kind.changes for kind in kinds.KINDS}
    registered |= {kind.removed for kind in kinds.KINDS if kind.removed is not None}
    fields = {f.name for f in dataclasses.fields(Changes)}
    assert fields - SPECIAL_CHANGES == registered


def test_every_field_of_a_snapshot_is_restored() -> None:
    restored = {kind.snapshot for kind in kinds.SNAPSHOT_KINDS}
    fields = {f.name for f in dataclasses.fields(EngineSnapshot)}
    assert fields - SPECIAL_SNAPSHOT - ON_DEMAND == restored


def test_row_kinds_are_distinct() -> None:
    rows = [kind.row for kind in kinds.KINDS]
    assert len(rows) == len(set(rows))


def test_a_batch_either_upserts_or_removes_a_key_the_later_call_winning() -> None:
    log = ChangeLog()
    first = WithheldRecord(RoomId("!r:x"), SessionId("s1"), "key", "m.unverified", "")
    second = WithheldRecord(RoomId("!r:x"), SessionId("s2"), "key", "m.unverified", "")
    log.withheld(first)
    log.withheld_removed(first.room_id, first.session_id)
    log.withheld_removed(second.room_id, second.session_id)
    log.withheld(second)
    changes = log.take()
    assert changes.withheld == [second]
    assert changes.withheld_removed == [(first.room_id, first.session_id)]
    ops = plan_changes(changes, b"k" * 32, 0)
    assert [type(op).__name__ for op in ops] == ["Delete", "Put"], "removed before upserted"
