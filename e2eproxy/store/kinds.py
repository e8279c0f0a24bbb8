"""The registry of the engine's record kinds: for each, its row kind, its key, its codec, where a
batch holds it (``Changes``) and where a restore puts it (``EngineSnapshot``).

A new kind of engine record is one entry here (plus its fields in ``crypto/changes.py``):
``plan_changes`` writes every kind listed (and deletes the keys of its ``<changes>_removed`` list),
and ``RecordStore.load_snapshot`` reads back every kind that has a ``snapshot`` attribute. What is
not a plain upsert or removal (users untracked, requests answered, the account row, to-device
hashes) stays written out in ``txn``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from e2eproxy.crypto.changes import (
    BackupRecord,
    CrossSigningRecord,
    IdentityRecord,
    ReplayRecord,
    RoomRecord,
    WithheldRecord,
)
from e2eproxy.store import codec

Key = tuple[str, ...]


@dataclass(frozen=True)
class RecordKind:
    """How one kind of engine record becomes rows and comes back."""

    row: str  # the ``kind`` column
    changes: str  # the ``Changes`` list of records to upsert
    key: Callable[[Any], Key]
    encode: Callable[[Any, bytes], dict[str, Any]]  # (record, pickle key) -> JSON value
    decode: Callable[[dict[str, Any], bytes], Any]
    # The ``EngineSnapshot`` list it restores into; None: loaded on demand, not at restore.
    snapshot: str | None = None
    # Better-copy rule: a stored row whose rank is lower or equal is kept.
    rank: Callable[[Any], int] | None = None
    # Rows read together (by the group), e.g. the replay entries of one session.
    group: Callable[[Any], Key] | None = None
    # A record this says is gone is deleted instead of stored.
    deleted: Callable[[Any], bool] | None = None
    # The ``Changes`` list of keys to delete (``<changes>_removed``); a one-part key may be
    # listed bare (a room id for ``(room_id,)``).
    removed: str | None = None

    def removed_keys(self, changes: Any) -> list[Key]:
        if self.removed is None:
            return []
        return [k if isinstance(k, tuple) else (k,) for k in getattr(changes, self.removed)]


def inbound_rank(first_known_index: int, imported: bool) -> int:
    """Lower is better: the earlier index wins; at equal index, direct beats imported."""
    return first_known_index * 2 + (1 if imported else 0)


def _plain(cls: type) -> tuple[Callable[[Any, bytes], dict[str, Any]],
                              Callable[[dict[str, Any], bytes], Any]]:
    return (lambda record, _key: codec.plain_to(record),
            lambda value, _key: codec.plain_from(cls, value))


def _keyless(encode: Callable[[Any], dict[str, Any]]) -> Callable[[Any, bytes], dict[str, Any]]:
    return lambda record, _key: encode(record)


OLM = RecordKind("olm", "olm_sessions", lambda r: (r.session_id,), codec.olm_to,
                 codec.olm_from, snapshot="olm_sessions", removed="olm_sessions_removed")
INBOUND = RecordKind(
    "igs", "inbound_group_sessions", lambda r: (r.room_id, r.session_id), codec.inbound_to,
    codec.inbound_from,
    rank=lambda r: inbound_rank(r.first_known_index, r.imported),
)
OUTBOUND = RecordKind("ogs", "outbound_group_sessions", lambda r: (r.room_id,),
                      codec.outbound_to, codec.outbound_from, snapshot="outbound_group_sessions",
                      removed="outbound_group_sessions_removed")
DEVICE = RecordKind("device", "devices", lambda r: (r.user_id, r.device_id),
                    _keyless(codec.device_to), lambda v, _k: codec.device_from(v),
                    snapshot="devices")
USER = RecordKind("user", "tracked_users", lambda r: (r.user_id,), _keyless(codec.tracked_to),
                  lambda v, _k: codec.tracked_from(v), snapshot="tracked_users",
                  deleted=lambda r: not r.tracked)
ROOM = RecordKind("room", "rooms", lambda r: (r.room_id,), *_plain(RoomRecord),
                  snapshot="rooms")
WITHHELD = RecordKind("withheld", "withheld", lambda r: (r.room_id, r.session_id),
                      *_plain(WithheldRecord), snapshot="withheld", removed="withheld_removed")
REPLAY = RecordKind("replay", "replay_entries", lambda r: (r.session_id, str(r.message_index)),
                    *_plain(ReplayRecord), group=lambda r: (r.room_id, r.session_id))
REQUEST = RecordKind("request", "requests_added", lambda r: (r.id,),
                     _keyless(codec.request_to), lambda v, _k: codec.request_from(v),
                     snapshot="pending_requests")

CROSS_SIGNING = RecordKind("xsign", "cross_signing", lambda r: (), *_plain(CrossSigningRecord),
                           snapshot="cross_signing")
IDENTITY = RecordKind("identity", "identities", lambda r: (r.user_id,), *_plain(IdentityRecord),
                      snapshot="identities")

BACKUP = RecordKind("backup", "backup", lambda r: (), *_plain(BackupRecord), snapshot="backup")

KINDS: tuple[RecordKind, ...] = (OLM, INBOUND, OUTBOUND, DEVICE, USER, ROOM, WITHHELD, REPLAY,
                                 REQUEST, CROSS_SIGNING, IDENTITY, BACKUP)
SNAPSHOT_KINDS = tuple(kind for kind in KINDS if kind.snapshot is not None)
