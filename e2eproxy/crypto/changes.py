"""What the store must persist, and what it hands back to rebuild an engine.

Every public ``OlmMachine`` call records what it changed; ``OlmMachine.take_changes()`` returns
those records as one ``Changes`` batch, which the store saves in one transaction.
Records are *upserts* keyed as noted on each class; a ``<list>_removed`` list holds the keys
of that list's records to delete (a key is never both upserted and removed in one batch).
Records hold live vodozemac objects (``Account``, ``Session``, ``GroupSession``,
``InboundGroupSession``): the store pickles them with its own 32-byte key;
the engine never sees that key.

Rebuilding: the store loads records into an ``EngineSnapshot`` and calls
``OlmMachine.restore(user_id, device_id, clock, snapshot)``. Inbound group sessions may be left out
of the snapshot (an account can hold 100,000 of them): before decrypting, the shell asks
``machine.sessions_needed(room_id, events)`` and passes what the store has to
``machine.load_inbound_group_sessions(records, replay_entries)``.

Store contract for inbound group sessions: the engine only emits a record when it believes it has
the better copy, but it may not have seen the stored copy (it was not loaded). So the store must
**keep the stored row when its ``first_known_index`` is lower or equal**, else overwrite it.

Records in a batch are the engine's live objects: save a batch before the next engine step.
Within a batch, apply ``requests_added`` before ``requests_removed`` (a request can be both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import vodozemac

from e2eproxy.crypto.settings import EncryptionSettings, LocalTrust
from e2eproxy.protocol.api import OutgoingRequest
from e2eproxy.types import DeviceId, RoomId, SessionId, UserId


@dataclass(slots=True)
class AccountRecord:
    """Our own Olm account (one row per engine).

    ``device_keys_uploaded``: the signed device keys reached the server (never upload twice).
    ``fallback_created_ms``: when the current fallback key was generated (weekly rotation).
    ``otk_server_count``: last ``signed_curve25519`` count the server reported, or None if unknown.
    """

    account: vodozemac.Account
    device_keys_uploaded: bool
    fallback_created_ms: int | None
    otk_server_count: int | None


@dataclass(slots=True)
class OlmSessionRecord:
    """An Olm session with a peer device. Key: ``session_id`` (index on ``sender_key``).

    ``sender_key`` is the peer's Curve25519 identity key. Times are clock milliseconds.
    """

    sender_key: str
    session_id: str
    session: vodozemac.Session
    created_ms: int
    last_used_ms: int
    last_received_ms: int


@dataclass(slots=True)
class InboundGroupSessionRecord:
    """A Megolm session we can decrypt with. Key: ``(room_id, session_id)``.

    ``sender_key``/``signing_key`` are the Curve25519 key of the Olm channel it arrived on and the
    Ed25519 key the sender claimed in that Olm payload. ``imported`` is True for keys that did not
    arrive directly over Olm from their creator (forwarded, backup, export). ``first_known_index``
    mirrors ``session.first_known_index`` so the store can compare copies without unpickling.
    """

    room_id: RoomId
    session_id: SessionId
    sender_key: str
    signing_key: str
    session: vodozemac.InboundGroupSession
    imported: bool
    shared_history: bool
    first_known_index: int
    # Known to be in the server-side key backup already (restored from it): not queued for
    # upload. Not stored: the store's backup queue is what says what still needs uploading.
    backed_up: bool = False


@dataclass(slots=True)
class OutboundGroupSessionRecord:
    """Our current Megolm session in a room. Key: ``room_id`` (at most one per room).

    ``shared_with`` maps user -> device -> the message index the key was shared at.
    ``pending_requests`` are to-device request ids carrying this session's key that are not yet
    acknowledged; ``encrypt`` refuses to run while any is pending or ``shared`` is False.
    """

    room_id: RoomId
    session: vodozemac.GroupSession
    created_ms: int
    message_count: int
    settings: EncryptionSettings
    shared_with: dict[UserId, dict[DeviceId, int]]
    pending_requests: set[str]
    shared: bool


@dataclass(slots=True)
class DeviceRecord:
    """A device of some user as last seen in ``/keys/query``. Key: ``(user_id, device_id)``.

    ``keys`` is the verified device-keys JSON as the server returned it. ``deleted`` devices are
    kept (so a re-appearing device with a different Ed25519 key is still rejected).
    ``no_olm_sent``: we already told it ``m.no_olm`` (sent once per device, not per session).
    ``last_unwedge_ms``: last MSC1719 recovery with this device (at most one per hour).
    """

    user_id: UserId
    device_id: DeviceId
    keys: dict[str, Any]
    local_trust: LocalTrust
    deleted: bool
    no_olm_sent: bool = False
    last_unwedge_ms: int | None = None


@dataclass(slots=True)
class TrackedUserRecord:
    """A user whose device list we follow. Key: ``user_id``; ``tracked=False`` means delete.

    ``dirty`` means a ``/keys/query`` is needed; ``seq`` is the change sequence number that a query
    answer must have covered to clear ``dirty``.
    """

    user_id: UserId
    tracked: bool
    dirty: bool
    seq: int


@dataclass(slots=True)
class RoomRecord:
    """What the engine knows of a room. Key: ``room_id``.

    ``encryption`` is the ``m.room.encryption`` content (None: not encrypted as far as we know;
    once set it is never cleared). ``members`` maps user -> membership (join, invite, leave...).
    """

    room_id: RoomId
    encryption: dict[str, Any] | None
    history_visibility: str
    members: dict[UserId, str]


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    """A decrypted Megolm message index. Key: ``(session_id, message_index)``."""

    room_id: RoomId
    session_id: SessionId
    message_index: int
    event_id: str
    origin_server_ts: int


@dataclass(frozen=True, slots=True)
class WithheldRecord:
    """An ``m.room_key.withheld`` we received. Key: ``(room_id, session_id)``."""

    room_id: RoomId
    session_id: SessionId
    sender_key: str
    code: str
    reason: str


@dataclass(slots=True)
class CrossSigningRecord:
    """Our own private cross-signing keys, as unpadded base64 seeds (None: not held here).
    One per account (key ``()``). ``uploaded``: the server lists their public halves; keys
    made by a bootstrap are saved before they are uploaded, and only used once they are."""

    master: str | None
    self_signing: str | None
    user_signing: str | None
    uploaded: bool


@dataclass(slots=True)
class IdentityRecord:
    """A user's cross-signing identity as the server last listed it (``keys``: the
    ``master_key``, ``self_signing_key`` and ``user_signing_key`` objects), and what we pinned:
    the master key accepted (first seen, or accepted after a change), whether we verified the
    current one, and whether we ever verified one. Key: ``user_id``."""

    user_id: UserId
    keys: dict[str, Any]
    pinned_master: str
    verified: bool = False
    previously_verified: bool = False


@dataclass(slots=True)
class BackupRecord:
    """The server-side key backup we upload to (one per account, key ``()``): its ``version``
    on the server, its ``auth_data``, and the decryption key (unpadded base64 of the 32 bytes)
    when we hold it. ``version`` None: no backup in use."""

    version: str | None
    auth_data: dict[str, Any]
    private_key: str | None


@dataclass(slots=True)
class Changes:
    """One batch of things to persist, in one transaction.

    ``to_device_hashes``: sha256 hex digests of to-device ciphertexts already processed (the store
    may prune old ones; a week is plenty). ``requests_added``/``requests_removed``: the durable
    queue of outgoing requests, so a crash between a step and its send does not lose them.
    ``*_removed``: keys of records to delete: rooms whose outbound session was discarded, Olm
    sessions expired past the per-device cap, withheld notices forgotten past their bound (a
    key is never both removed and upserted in one batch).
    """

    account: AccountRecord | None = None
    olm_sessions: list[OlmSessionRecord] = field(default_factory=list)
    olm_sessions_removed: list[str] = field(default_factory=list)
    inbound_group_sessions: list[InboundGroupSessionRecord] = field(default_factory=list)
    outbound_group_sessions: list[OutboundGroupSessionRecord] = field(default_factory=list)
    outbound_group_sessions_removed: list[RoomId] = field(default_factory=list)
    devices: list[DeviceRecord] = field(default_factory=list)
    tracked_users: list[TrackedUserRecord] = field(default_factory=list)
    rooms: list[RoomRecord] = field(default_factory=list)
    replay_entries: list[ReplayRecord] = field(default_factory=list)
    to_device_hashes: list[str] = field(default_factory=list)
    withheld: list[WithheldRecord] = field(default_factory=list)
    withheld_removed: list[tuple[RoomId, SessionId]] = field(default_factory=list)
    requests_added: list[OutgoingRequest] = field(default_factory=list)
    requests_removed: list[str] = field(default_factory=list)
    cross_signing: list[CrossSigningRecord] = field(default_factory=list)
    identities: list[IdentityRecord] = field(default_factory=list)
    backup: list[BackupRecord] = field(default_factory=list)

    def is_empty(self) -> bool:
        return self.account is None and not any(
            (
                self.olm_sessions,
                self.olm_sessions_removed,
                self.inbound_group_sessions,
                self.outbound_group_sessions,
                self.outbound_group_sessions_removed,
                self.devices,
                self.tracked_users,
                self.rooms,
                self.replay_entries,
                self.to_device_hashes,
                self.withheld,
                self.withheld_removed,
                self.requests_added,
                self.requests_removed,
                self.cross_signing,
                self.identities,
                self.backup,
            )
        )


@dataclass(slots=True)
class EngineSnapshot:
    """Everything loaded from the store to rebuild an engine (see ``OlmMachine.restore``).

    ``inbound_group_sessions`` and ``replay_entries`` may be partial or empty (loaded on demand).
    ``to_device_hashes`` may be limited to the most recent ones. ``pending_requests`` are the
    requests added and not yet removed; they are handed out again.
    """

    account: AccountRecord
    olm_sessions: list[OlmSessionRecord] = field(default_factory=list)
    outbound_group_sessions: list[OutboundGroupSessionRecord] = field(default_factory=list)
    devices: list[DeviceRecord] = field(default_factory=list)
    tracked_users: list[TrackedUserRecord] = field(default_factory=list)
    rooms: list[RoomRecord] = field(default_factory=list)
    withheld: list[WithheldRecord] = field(default_factory=list)
    pending_requests: list[OutgoingRequest] = field(default_factory=list)
    to_device_hashes: list[str] = field(default_factory=list)
    inbound_group_sessions: list[InboundGroupSessionRecord] = field(default_factory=list)
    replay_entries: list[ReplayRecord] = field(default_factory=list)
    cross_signing: list[CrossSigningRecord] = field(default_factory=list)
    identities: list[IdentityRecord] = field(default_factory=list)
    backup: list[BackupRecord] = field(default_factory=list)


class ChangeLog:
    """Collects records during engine steps; ``take()`` hands them out once.

    Keyed records are de-duplicated so a batch holds the newest version of each once, and a
    record is either upserted or removed in a batch, never both (the later call wins).
    """

    def __init__(self) -> None:
        self._changes = Changes()
        self._keyed: dict[str, dict[object, Any]] = {}
        self._removed: dict[str, dict[object, None]] = {}

    def _put(self, kind: str, key: object, record: Any) -> None:
        self._keyed.setdefault(kind, {})[key] = record
        self._removed.get(kind, {}).pop(key, None)

    def _remove(self, kind: str, key: object) -> None:
        """Delete the stored record of ``kind`` (its ``<kind>_removed`` list) under ``key``."""
        self._keyed.get(kind, {}).pop(key, None)
        self._removed.setdefault(kind, {})[key] = None

    def account(self, record: AccountRecord) -> None:
        self._changes.account = record

    def olm_session(self, record: OlmSessionRecord) -> None:
        self._put("olm_sessions", record.session_id, record)

    def olm_session_removed(self, session_id: str) -> None:
        self._remove("olm_sessions", session_id)

    def inbound(self, record: InboundGroupSessionRecord) -> None:
        self._put("inbound_group_sessions", (record.room_id, record.session_id), record)

    def outbound(self, record: OutboundGroupSessionRecord) -> None:
        self._put("outbound_group_sessions", record.room_id, record)

    def outbound_removed(self, room_id: RoomId) -> None:
        self._remove("outbound_group_sessions", room_id)

    def device(self, record: DeviceRecord) -> None:
        self._put("devices", (record.user_id, record.device_id), record)

    def tracked_user(self, record: TrackedUserRecord) -> None:
        self._put("tracked_users", record.user_id, record)

    def room(self, record: RoomRecord) -> None:
        self._put("rooms", record.room_id, record)

    def replay(self, record: ReplayRecord) -> None:
        self._changes.replay_entries.append(record)

    def to_device_hash(self, digest: str) -> None:
        self._changes.to_device_hashes.append(digest)

    def withheld(self, record: WithheldRecord) -> None:
        self._put("withheld", (record.room_id, record.session_id), record)

    def withheld_removed(self, room_id: RoomId, session_id: SessionId) -> None:
        self._remove("withheld", (room_id, session_id))

    def cross_signing(self, record: CrossSigningRecord) -> None:
        self._put("cross_signing", (), record)

    def identity(self, record: IdentityRecord) -> None:
        self._put("identities", record.user_id, record)

    def backup(self, record: BackupRecord) -> None:
        self._put("backup", (), record)

    def request_added(self, request: OutgoingRequest) -> None:
        self._changes.requests_added.append(request)

    def request_removed(self, request_id: str) -> None:
        self._changes.requests_removed.append(request_id)

    def take(self) -> Changes:
        changes, self._changes = self._changes, Changes()
        for kind, records in self._keyed.items():
            setattr(changes, kind, list(records.values()))
        for kind, keys in self._removed.items():
            setattr(changes, f"{kind}_removed", list(keys))
        self._keyed, self._removed = {}, {}
        return changes
