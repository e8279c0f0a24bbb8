"""Every list of engine records a batch can hold is written by the store, and every list a
restore needs is read back: through the kind registry, or one of the few special rows."""

from __future__ import annotations

import dataclasses

from e2eproxy.crypto.changes import Changes, EngineSnapshot
from e2eproxy.store import kinds

# Written out by hand in txn.plan_changes / records.load_snapshot (not plain upserts).
SPECIAL_CHANGES = {"account", "outbound_group_sessions_removed", "requests_removed",
                   "to_device_hashes"}
SPECIAL_SNAPSHOT = {"account", "to_device_hashes"}
ON_DEMAND = {"inbound_group_sessions", "replay_entries"}  # loaded when events need them


def test_every_field_of_a_batch_is_stored() -> None:
    registered = {kind.changes for kind in kinds.KINDS}
    fields = {f.name for f in dataclasses.fields(Changes)}
    assert fields - SPECIAL_CHANGES == registered


def test_every_field_of_a_snapshot_is_restored() -> None:
    restored = {kind.snapshot for kind in kinds.SNAPSHOT_KINDS}
    fields = {f.name for f in dataclasses.fields(EngineSnapshot)}
    assert fields - SPECIAL_SNAPSHOT - ON_DEMAND == restored


def test_row_kinds_are_distinct() -> None:
    rows = [kind.row for kind in kinds.KINDS]
    assert len(rows) == len(set(rows))
