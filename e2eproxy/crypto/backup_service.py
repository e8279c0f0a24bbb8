"""The engine's side of server-side key backup (``machine.backup``): which backup version we
upload to and its key, sessions encrypted for upload, and backed-up sessions taken back in.

The shell does the I/O: it reads batches from the store's backup queue, asks ``upload_body``,
sends it, and marks them backed up after the server's answer; it fetches backed-up sessions and
hands them to ``import_sessions``. A version with a public key we cannot tie to a private key
we hold is still uploaded to (encryption needs only the public key), but not restored from.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import vodozemac

from e2eproxy.crypto.account import AccountState
from e2eproxy.crypto.backup import (
    BackupDecryptionKey,
    BackupEncryptionKey,
    BackupError,
    key_backup_data,
    restore_session,
    sign_auth_data,
)
from e2eproxy.crypto.changes import BackupRecord, ChangeLog, InboundGroupSessionRecord
from e2eproxy.crypto.megolm_in import InboundSessions
from e2eproxy.crypto.settings import MEGOLM_ALGORITHM
from e2eproxy.crypto.trust import TrustState
from e2eproxy.errors import LocalProtocolError
from e2eproxy.types import RoomId, SessionId

logger = logging.getLogger(__name__)
BACKUP_SECRET = "m.megolm_backup.v1"


class BackupService:
    def __init__(self, account: AccountState, inbound: InboundSessions, trust: TrustState,
                 log: ChangeLog) -> None:
        self._account, self._inbound, self._trust, self._log = account, inbound, trust, log
        self._record = BackupRecord(None, {}, None)

    def load(self, records: list[BackupRecord]) -> None:
        for record in records[-1:]:
            self._record = record

    # -- state ---------------------------------------------------------------------------
    @property
    def version(self) -> str | None:
        return self._record.version

    @property
    def decryption_key(self) -> BackupDecryptionKey | None:
        secret = self._record.private_key
        return BackupDecryptionKey.from_base64(secret) if secret else None

    def status(self) -> dict[str, Any]:
        return {"version": self._record.version, "has_key": self._record.private_key is not None}

    def secret(self) -> str | None:
        """The backup key as secret storage and ``m.secret.send`` carry it."""
        return self._record.private_key

    def signed_auth_data(self, key: BackupDecryptionKey) -> dict[str, Any]:
        """A new backup's ``auth_data``: its public key, signed by this device and, when we
        hold it, our master key (so our other devices trust the backup)."""
        auth = sign_auth_data(key.auth_data(), self._account.user_id,
                              f"ed25519:{self._account.device_id}", self._account.sign)
        master = self._trust.own.master
        if master is not None:
            auth = sign_auth_data(auth, self._account.user_id, master.key_id, master.sign)
        return auth

    def use(self, version: str, auth_data: Mapping[str, Any],
            key: BackupDecryptionKey | None) -> None:
        """Upload to ``version`` from now on; ``key`` (if given) must match its public key."""
        if key is not None and not key.matches(auth_data):
            raise LocalProtocolError("the backup key does not match that backup version")
        secret = key.to_base64() if key is not None else None
        self._record = BackupRecord(version, dict(auth_data), secret)
        self._log.backup(self._record)
        logger.info("key backup version %s in use%s", version, "" if key else " (upload only)")

    def disable(self, reason: str) -> None:
        if self._record.version is not None:
            logger.warning("key backup version %s no longer used: %s", self._record.version,
                           reason)
        self._record = BackupRecord(None, {}, None)
        self._log.backup(self._record)

    def import_key(self, secret: str) -> BackupDecryptionKey | None:
        """A backup key from our other device or from recovery, kept if it is this version's."""
        try:
            key = BackupDecryptionKey.from_base64(secret)
        except BackupError:
            return None
        if self._record.version is None or not key.matches(self._record.auth_data):
            return None
        self._record = BackupRecord(self._record.version, self._record.auth_data,
                                    key.to_base64())
        self._log.backup(self._record)
        return key

    # -- upload --------------------------------------------------------------------------
    def upload_body(self, records: Iterable[InboundGroupSessionRecord]) -> dict[str, Any]:
        """``PUT /room_keys/keys``: ``rooms -> room -> sessions -> session -> KeyBackupData``."""
        if self._record.version is None:
            raise LocalProtocolError("no key backup is in use")
        public = BackupEncryptionKey.from_auth_data(self._record.auth_data)
        rooms: dict[str, dict[str, Any]] = {}
        for record in records:
            data = key_backup_data(public, exported_session(record),
                                   forwarded_count=1 if record.imported else 0)
            rooms.setdefault(record.room_id, {"sessions": {}})["sessions"][
                record.session_id] = data
        return {"rooms": rooms}

    # -- restore -------------------------------------------------------------------------
    def decrypt(self, room_id: str, session_id: str, data: Any
                ) -> InboundGroupSessionRecord | None:
        """One ``KeyBackupData`` decrypted into a record (imported, known to be backed up);
        None if we hold no key or it does not decrypt (logged, never raised)."""
        key = self.decryption_key
        if key is None:
            return None
        try:
            entry = restore_session(key, room_id, session_id, data)
        except BackupError as exc:
            logger.warning("a backed-up room key of %s could not be used: %s", room_id, exc)
            return None
        return record_from_backup(entry)

    def import_sessions(self, records: Iterable[InboundGroupSessionRecord]) -> int:
        """Restored sessions into the engine, each kept only if better than ours."""
        return sum(1 for record in records if self._inbound.add(record))


def exported_session(record: InboundGroupSessionRecord) -> dict[str, Any]:
    """The ``ExportedSessionData`` of a session, from its first known index."""
    session_key = record.session.export_at(record.first_known_index)
    assert session_key is not None  # export_at(first_known_index) always exists
    return {
        "algorithm": MEGOLM_ALGORITHM,
        "room_id": record.room_id,
        "sender_key": record.sender_key,
        "session_id": record.session_id,
        "session_key": session_key.to_base64(),
        "sender_claimed_keys": {"ed25519": record.signing_key},
        "forwarding_curve25519_key_chain": [],
        "m.shared_history": record.shared_history,
    }


def record_from_backup(entry: Mapping[str, Any]) -> InboundGroupSessionRecord | None:
    try:
        session = vodozemac.InboundGroupSession.import_session(
            vodozemac.ExportedSessionKey(entry["session_key"]))
    except (ValueError, TypeError, KeyError):
        return None
    claimed = entry.get("sender_claimed_keys")
    signing = claimed.get("ed25519") if isinstance(claimed, Mapping) else None
    shared = entry.get("m.shared_history", entry.get("shared_history", False))
    return InboundGroupSessionRecord(
        room_id=RoomId(str(entry["room_id"])), session_id=SessionId(session.session_id),
        sender_key=str(entry.get("sender_key", "")), signing_key=str(signing or ""),
        session=session, imported=True, shared_history=shared is True,
        first_known_index=session.first_known_index, backed_up=True,
    )
