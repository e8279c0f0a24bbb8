"""Room key export and import through a ``Store`` (what rust-sdk calls ``export_room_keys``).

The caller (the CLI) should hold the account's lease, or go through the running proxy, so that
no engine works on the account meanwhile; the store's better-session rule keeps a concurrent
engine save from undoing an import anyway.
Import merges by the better-session rule: a session is taken when the store has none, or when
the file's copy starts at a lower index and is *connected* to the stored one (same ratchet at
the stored index); then the stored copy's sender keys and trust are kept. New sessions are marked
imported (less trusted than keys received directly over Olm).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import vodozemac

from e2eproxy.crypto.backup_service import exported_session
from e2eproxy.crypto.changes import Changes, InboundGroupSessionRecord
from e2eproxy.crypto.settings import MEGOLM_ALGORITHM
from e2eproxy.errors import StoreError
from e2eproxy.key_export import (
    DEFAULT_ROUNDS,
    InvalidExport,
    decrypt_key_export,
    encrypt_key_export,
)
from e2eproxy.store.base import AccountKey, Store
from e2eproxy.types import RoomId, SessionId

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]
BATCH = 500


def _no_progress(_done: int, _total: int) -> None:
    return None


async def _accounts_of(store: Store, user_id: str, device_id: str | None) -> list[AccountKey]:
    accounts = [
        a
        for a in await store.list_accounts()
        if a.user_id == user_id and (device_id is None or a.device_id == device_id)
    ]
    if not accounts:
        raise StoreError(f"the store holds no account for {user_id}")
    return accounts


async def export_room_keys(
    store: Store,
    user_id: str,
    passphrase: str,
    progress: Progress = _no_progress,
    *,
    device_id: str | None = None,
    rounds: int = DEFAULT_ROUNDS,
) -> str:
    """The armored export of every inbound session of ``user_id``'s account(s) in ``store``."""
    accounts = await _accounts_of(store, user_id, device_id)
    total = sum([await store.count_inbound_group_sessions(a) for a in accounts])
    best: dict[tuple[str, str], InboundGroupSessionRecord] = {}
    done = 0
    for account in accounts:
        async for batch in store.iter_inbound_group_sessions(account, BATCH):
            for record in batch:
                key = (record.room_id, record.session_id)
                if key not in best or record.first_known_index < best[key].first_known_index:
                    best[key] = record
            done += len(batch)
            progress(done, total)
    sessions = [exported_session(record) for record in best.values()]
    # PBKDF2 with 500,000 rounds takes about half a second: keep it off the event loop.
    return await asyncio.to_thread(encrypt_key_export, sessions, passphrase, rounds)


def _record_from(entry: dict[str, Any], number: int) -> InboundGroupSessionRecord:
    try:
        key = vodozemac.ExportedSessionKey(entry["session_key"])
        session = vodozemac.InboundGroupSession.import_session(key)
    except (ValueError, TypeError) as exc:
        raise InvalidExport(f"entry {number} of the key export has a bad session_key") from exc
    if session.session_id != entry["session_id"]:
        raise InvalidExport(f"entry {number} of the key export: session_id does not match its key")
    claimed = entry.get("sender_claimed_keys") or {}
    return InboundGroupSessionRecord(
        room_id=RoomId(entry["room_id"]),
        session_id=SessionId(session.session_id),
        sender_key=entry["sender_key"],
        signing_key=str(claimed.get("ed25519", "")),
        session=session,
        imported=True,
        shared_history=bool(entry.get("m.shared_history", False)),
        first_known_index=session.first_known_index,
    )


def parse_sessions(entries: list[dict[str, Any]]) -> list[InboundGroupSessionRecord]:
    """Records for the Megolm entries; an entry whose key is bad is skipped with a warning
    (as matrix-rust-sdk: it costs that entry, not the file), and not counted as imported."""
    records = []
    for number, entry in enumerate(entries):
        if entry["algorithm"] != MEGOLM_ALGORITHM:
            continue  # counted in the total, never imported
        try:
            records.append(_record_from(entry, number))
        except InvalidExport as exc:
            log.warning("%s: skipped", exc)
    return records


def merge(
    new: InboundGroupSessionRecord, stored: InboundGroupSessionRecord | None
) -> InboundGroupSessionRecord | None:
    """What to store for an imported session, or None to keep the stored one."""
    if stored is None:
        return new
    if stored.first_known_index <= new.first_known_index:
        return None
    index = stored.first_known_index
    ours, theirs = stored.session.export_at(index), new.session.export_at(index)
    if ours is None or theirs is None or ours.to_base64() != theirs.to_base64():
        log.warning("imported session %s is not connected to the stored one", new.session_id)
        return None
    # Same ratchet, proven: keep the stored copy's origin and trust, take the earlier index.
    return InboundGroupSessionRecord(
        stored.room_id,
        stored.session_id,
        stored.sender_key,
        stored.signing_key,
        new.session,
        stored.imported,
        stored.shared_history,
        new.first_known_index,
    )


async def import_room_keys(
    store: Store,
    user_id: str,
    data: str,
    passphrase: str,
    progress: Progress = _no_progress,
    *,
    device_id: str | None = None,
) -> tuple[int, int]:
    """Import an armored export into ``user_id``'s account(s); returns (imported, total).

    A file that cannot be read raises its ``KeyExportError`` before anything is stored; an
    entry that is no usable session is skipped (logged), the others imported.
    """
    accounts = await _accounts_of(store, user_id, device_id)
    entries = await asyncio.to_thread(decrypt_key_export, data, passphrase)
    records = parse_sessions(entries)
    imported: set[tuple[str, str]] = set()
    for start in range(0, len(records), BATCH):
        batch = records[start : start + BATCH]
        for account in accounts:
            for record in await _merge_batch(store, account, batch):
                imported.add((record.room_id, record.session_id))
        progress(min(start + BATCH, len(records)), len(records))
    return len(imported), len(entries)


async def _merge_batch(
    store: Store, account: AccountKey, batch: list[InboundGroupSessionRecord]
) -> list[InboundGroupSessionRecord]:
    ids = [(r.room_id, r.session_id) for r in batch]
    stored, _ = await store.load_inbound_group_sessions(account, ids)
    by_id = {(r.room_id, r.session_id): r for r in stored}
    chosen: dict[tuple[str, str], InboundGroupSessionRecord] = {}
    for record in batch:
        key = (record.room_id, record.session_id)
        better = merge(record, chosen.get(key) or by_id.get(key))
        if better is not None:
            chosen[key] = better
    if chosen:
        await store.save(account, Changes(inbound_group_sessions=list(chosen.values())))
    return list(chosen.values())
