"""Server-side key backup, the I/O half (the engine half is ``machine.backup``).

- The uploader (one task per account) sends the store's queued sessions in batches and marks
  them backed up only after the server's 200; a version the server no longer has (deleted, or
  replaced by another device) is noticed there and the backup is set aside, with a warning.
- ``restore_all`` reads the whole backup and imports it in steps of a few hundred sessions,
  reporting progress; ``restore_one`` fetches one session on demand, for an event that would
  otherwise reach the client undecryptable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from e2eproxy.crypto.changes import InboundGroupSessionRecord
from e2eproxy.errors import Errcode, UpstreamError
from e2eproxy.proxy.account import Account
from e2eproxy.proxy.outgoing import call
from e2eproxy.proxy.upstream import Upstream
from e2eproxy.timing import spread

log = logging.getLogger(__name__)
V3 = "/_matrix/client/v3"
UPLOAD_BATCH = 100
IMPORT_BATCH = 500
IDLE_CHECK_S = 60.0
IDLE_JITTER = 0.25  # accounts that started together do not all check in the same moment
MAX_BACKOFF_S = 300.0
WRONG_VERSION = "M_WRONG_ROOM_KEYS_VERSION"
# Sessions asked for on demand and not found: not asked again for this long.
MISS_TTL_S = 600.0
MAX_MISSES = 10_000


@dataclass
class RestoreProgress:
    """What a full restore did so far (shown by ``ctl recovery status``)."""

    total: int = 0
    imported: int = 0
    failed: int = 0
    running: bool = False
    error: str | None = None


@dataclass
class BackupRuntime:
    """Per-account state of the backup's I/O (not persisted)."""

    progress: RestoreProgress = field(default_factory=RestoreProgress)
    misses: dict[tuple[str, str], float] = field(default_factory=dict)


def runtime_of(account: Account) -> BackupRuntime:
    runtime = account.extras.get("backup")
    if not isinstance(runtime, BackupRuntime):
        runtime = account.extras["backup"] = BackupRuntime()
    return runtime


# -- upload ----------------------------------------------------------------------------------


async def upload_loop(upstream: Upstream, account: Account) -> None:
    """Drain the backup queue while a backup is in use; wake on new keys or about every
    minute. With no backup in use it sleeps until woken (recovery sets one up and wakes it)."""
    backoff = 1.0
    while True:
        if account.machine.backup.version is None:
            await account.backup_work.wait()
            account.backup_work.clear()
        else:
            await account.wait_for_backup_work(spread(IDLE_CHECK_S, IDLE_JITTER))
        await account.token_valid.wait()
        try:
            while await upload_batch(upstream, account):
                backoff = 1.0
        except (UpstreamError, _Retry) as exc:
            log.info("key backup upload for %s paused (%s); retrying in %.0f s",
                     account.device_id, exc, backoff)
            await account.timer.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            account.wake_backup()


class _Retry(Exception):
    """The server could not take a batch now (429, 5xx): try again later."""


async def upload_batch(upstream: Upstream, account: Account) -> bool:
    """Upload one batch; True if there may be more."""
    version = account.machine.backup.version
    if version is None:
        return False
    batch = await account.store.backup_batch(account.key, UPLOAD_BATCH)
    if not batch:
        return False
    async with account.step() as step:
        body = step.machine.backup.upload_body(batch)
    path = f"{V3}/room_keys/keys?version={quote(version, safe='')}"
    status, answer = await call(upstream, account, "PUT", path, body)
    if status == 200:
        await account.store.mark_backed_up(account.key, [_key(r) for r in batch])
        log.debug("%d room keys backed up for %s", len(batch), account.device_id)
        return True
    errcode = answer.get("errcode") if isinstance(answer, dict) else None
    if errcode == WRONG_VERSION or errcode == Errcode.NOT_FOUND:
        async with account.step() as step:
            step.machine.backup.disable(f"the server says {errcode} (deleted or replaced)")
        return False
    raise _Retry(f"status {status}")


def _key(record: InboundGroupSessionRecord) -> tuple[Any, Any]:
    return (record.room_id, record.session_id)


# -- restore ---------------------------------------------------------------------------------


async def restore_all(upstream: Upstream, account: Account) -> RestoreProgress:
    """Every session of the backup in use into the engine and the store."""
    progress = runtime_of(account).progress
    version = account.machine.backup.version
    if version is None or account.machine.backup.decryption_key is None:
        progress.error = "no backup key to restore with"
        return progress
    progress.running, progress.error = True, None
    progress.total = progress.imported = progress.failed = 0
    try:
        status, body = await call(upstream, account, "GET",
                                  f"{V3}/room_keys/keys?version={quote(version, safe='')}")
        if status != 200 or not isinstance(body, dict):
            progress.error = f"the server answered {status}"
            return progress
        entries = list(_entries(body))
        del body  # the decrypted copies go in batches; the answer itself is not kept
        progress.total = len(entries)
        for start in range(0, len(entries), IMPORT_BATCH):
            await _import(account, entries[start : start + IMPORT_BATCH], progress)
        log.info("restored %d room keys from the backup for %s (%d unusable)",
                 progress.imported, account.device_id, progress.failed)
    except UpstreamError as exc:
        progress.error = str(exc)
    finally:
        progress.running = False
    return progress


def _entries(body: dict[str, Any]) -> list[tuple[str, str, Any]]:
    rooms = body.get("rooms")
    found = []
    for room_id, room in (rooms.items() if isinstance(rooms, dict) else ()):
        sessions = room.get("sessions") if isinstance(room, dict) else None
        for session_id, data in (sessions.items() if isinstance(sessions, dict) else ()):
            if isinstance(room_id, str) and isinstance(session_id, str):
                found.append((room_id, session_id, data))
    return found


async def _import(account: Account, entries: list[tuple[str, str, Any]],
                  progress: RestoreProgress) -> None:
    async with account.step() as step:
        backup = step.machine.backup
        records = [backup.decrypt(room, session, data) for room, session, data in entries]
        usable = [r for r in records if r is not None]
        backup.import_sessions(usable)
    progress.imported += len(usable)
    progress.failed += len(records) - len(usable)
    await account.notify_keys()


async def restore_one(upstream: Upstream, account: Account, room_id: str,
                      session_id: str) -> bool:
    """One session from the backup, if it has it; True when it was imported."""
    backup = account.machine.backup
    version = backup.version
    runtime = runtime_of(account)
    now = account.timer.monotonic()
    if version is None or backup.decryption_key is None:
        return False
    missed = runtime.misses.get((room_id, session_id))
    if missed is not None and now - missed < MISS_TTL_S:
        return False
    path = (f"{V3}/room_keys/keys/{quote(room_id, safe='')}/{quote(session_id, safe='')}"
            f"?version={quote(version, safe='')}")
    try:
        status, data = await call(upstream, account, "GET", path, attempts=1)
    except UpstreamError:
        return False
    record = None
    if status == 200:
        async with account.step() as step:
            record = step.machine.backup.decrypt(room_id, session_id, data)
            if record is not None:
                step.machine.backup.import_sessions([record])
    if record is None:
        if len(runtime.misses) >= MAX_MISSES:
            runtime.misses.clear()
        runtime.misses[(room_id, session_id)] = now
        return False
    log.debug("room key %s of %s restored from the backup on demand", session_id, room_id)
    return True
