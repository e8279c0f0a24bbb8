"""The engine facade: one synchronous, sans-I/O Olm/Megolm machine per device.

Each public method is one atomic step over in-memory state. Requests go out as data
(``OutgoingRequest``), answers come back through ``mark_request_as_sent``/``..._failed``, and what
must be persisted is collected until ``take_changes()``. See ``changes.py`` for restoring.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any

import vodozemac

from e2eproxy.crypto.account import AccountState
from e2eproxy.crypto.backup_service import BackupService
from e2eproxy.crypto.changes import (
    AccountRecord,
    ChangeLog,
    Changes,
    DeviceRecord,
    EngineSnapshot,
    InboundGroupSessionRecord,
    ReplayRecord,
)
from e2eproxy.crypto.claims import OlmClaimer
from e2eproxy.crypto.clock import Clock
from e2eproxy.crypto.decrypt import RoomDecryptor, bundled_events, megolm_session_id
from e2eproxy.crypto.devices import DeviceTracker
from e2eproxy.crypto.key_requester import KeyRequester
from e2eproxy.crypto.key_requests import KeyRequestResponder
from e2eproxy.crypto.key_share import KeySharer
from e2eproxy.crypto.megolm_in import DEFAULT_CACHE_SIZE, InboundSessions
from e2eproxy.crypto.megolm_out import OutboundSessions
from e2eproxy.crypto.olm import OlmSessions
from e2eproxy.crypto.requests import RequestQueue
from e2eproxy.crypto.results import Decrypted, DecryptionFailure, FailureReason, SyncResult
from e2eproxy.crypto.rooms import RoomStates
from e2eproxy.crypto.secrets_gossip import SecretGossip
from e2eproxy.crypto.settings import EncryptionSettings, LocalTrust, SharingStrategy
from e2eproxy.crypto.sync import Parts, SyncProcessor
from e2eproxy.crypto.to_device import Handler, ToDeviceRouter
from e2eproxy.crypto.trust import TrustState
from e2eproxy.crypto.trust_service import Trust
from e2eproxy.crypto.withheld import WithheldNotices
from e2eproxy.errors import LocalProtocolError
from e2eproxy.protocol import api
from e2eproxy.protocol.api import OutgoingRequest, RequestKind
from e2eproxy.types import DeviceId, RoomId, SessionId, UserId

logger = logging.getLogger(__name__)
MAX_QUERY_USERS = 250


class OlmMachine:
    """End-to-end encryption for one Matrix device, driven by data in and data out."""

    def __init__(self, user_id: str, device_id: str, clock: Clock,
                 account: vodozemac.Account | None = None, *,
                 inbound_cache_size: int = DEFAULT_CACHE_SIZE,
                 _record: AccountRecord | None = None) -> None:
        self.user_id = UserId(user_id)
        self.device_id = DeviceId(device_id)
        self._clock = clock
        self._log = ChangeLog()
        record = _record or AccountRecord(account or vodozemac.Account(), False, None, None)
        self._account = AccountState(self.user_id, self.device_id, record, self._log)
        if _record is None:
            self._log.account(record)
        self._devices = DeviceTracker(self.user_id, self.device_id, self._account.ed25519,
                                      self._log)
        self._olm = OlmSessions(self._account, self._devices, clock, self._log)
        self._claimer = OlmClaimer(self._devices, self._olm, clock, self._log)
        self._inbound = InboundSessions(self._log, inbound_cache_size)
        self._outbound = OutboundSessions(self._log)
        self._rooms = RoomStates(self._log)
        self._queue = RequestQueue(self._log)
        self._withheld = WithheldNotices(self._devices, self._inbound, self._log)
        parts = Parts(self._account, self._devices, self._olm, self._claimer, self._inbound,
                      self._outbound, self._rooms, self._withheld, self._log)
        self._router = ToDeviceRouter()
        self._sync = SyncProcessor(parts, clock.now_ms, self._router)
        self._sync.inbound_complete = _record is None
        self._decryptor = RoomDecryptor(self._inbound, self._devices, self._withheld, self._log)
        self._sharer = KeySharer(self._account, self._devices, self._olm, self._claimer,
                                 self._outbound, self._queue, clock)
        self._key_requests = KeyRequestResponder(self._account, self._devices, self._olm,
                                                 self._outbound, self._inbound, self._queue)
        self._key_requests.register(self._router)
        state = TrustState(self._account, self._log)
        # Server-side key backup: the shell uploads and restores through it.
        self.backup = BackupService(self._account, self._inbound, state, self._log)
        self._gossip = SecretGossip(self._account, self._devices, self._olm, self._claimer,
                                    self._queue, state, self.backup)
        self._gossip.register(self._router)
        # Cross-signing, verification and secrets: the facade the control interface drives.
        self.trust = Trust(self._account, self._devices, self._rooms, self._gossip, state,
                           self._queue, clock, self._log)
        self.trust.register(self._router)
        self._sharer.trust = state
        self._decryptor.trust = state
        self._key_requests.trust, self._key_requests.claimer = state, self._claimer
        # Room keys we lack, asked of our own verified devices (their answers kept as imported).
        self._requester = KeyRequester(self._account, self._devices, self._inbound, self._queue,
                                       state)
        self._requester.register(self._router)
        # What an answer (or a failure) of each kind of request does to the state.
        self._on_sent: dict[RequestKind, Callable[[str, Any], None]] = {
            RequestKind.KEYS_UPLOAD: self._upload_sent,
            RequestKind.KEYS_QUERY: self._query_sent,
            RequestKind.KEYS_CLAIM: self._claim_sent,
            RequestKind.TO_DEVICE: self._to_device_sent,
            RequestKind.SIGNATURES_UPLOAD: lambda _id, _response: None,
            RequestKind.ROOM_MESSAGE: lambda _id, _response: None,
        }
        self._on_failed: dict[RequestKind, Callable[[str], None]] = {
            RequestKind.KEYS_UPLOAD: lambda _id: self._account.upload_failed(),
            RequestKind.KEYS_QUERY: self._query_failed,
            RequestKind.KEYS_CLAIM: self._claimer.failed,
            RequestKind.TO_DEVICE: self._to_device_failed,
            RequestKind.SIGNATURES_UPLOAD: lambda _id: None,  # the shell logs it
            RequestKind.ROOM_MESSAGE: lambda _id: None,
        }
        self._devices.track([self.user_id])

    # -- restore -------------------------------------------------------------------------
    @classmethod
    def restore(cls, user_id: str, device_id: str, clock: Clock, snapshot: EngineSnapshot, *,
                inbound_cache_size: int = DEFAULT_CACHE_SIZE,
                inbound_complete: bool = False) -> OlmMachine:
        """Rebuild an engine from stored records.

        ``inbound_complete``: the snapshot holds *every* stored inbound group session, so a key
        that is not in it is known to be new. Pending to-device requests are handed out again by
        ``outgoing_requests``; other pending requests are regenerated from state.
        """
        machine = cls(user_id, device_id, clock, inbound_cache_size=inbound_cache_size,
                      _record=snapshot.account)
        machine._devices.load(snapshot.tracked_users, snapshot.devices)
        machine._outbound.load(snapshot.outbound_group_sessions)
        machine._rooms.load(snapshot.rooms)
        machine._inbound.load(snapshot.inbound_group_sessions, snapshot.replay_entries)
        machine._sync.load_hashes(snapshot.to_device_hashes)
        machine.trust.state.load(snapshot.cross_signing, snapshot.identities)
        machine.backup.load(snapshot.backup)
        machine._sync.inbound_complete = inbound_complete
        # To-device requests are sent again as they were; the others are made anew from state.
        resent = (RequestKind.TO_DEVICE, RequestKind.ROOM_MESSAGE)
        to_device = [r for r in snapshot.pending_requests if r.kind in resent]
        machine._queue.load(to_device)
        for request in snapshot.pending_requests:
            if request.kind not in resent:
                machine._log.request_removed(request.id)
        machine._log.take()
        # Bounds a store written before them may exceed: what they drop is deleted there too.
        machine._olm.load(snapshot.olm_sessions)
        machine._withheld.load(snapshot.withheld)
        machine._devices.track([machine.user_id])
        return machine

    # -- identity ------------------------------------------------------------------------
    @property
    def identity_keys(self) -> dict[str, str]:
        """Our ``{"ed25519": ..., "curve25519": ...}`` public keys."""
        return self._account.identity_keys

    def device_keys(self) -> dict[str, Any]:
        """Our signed ``device_keys`` object as uploaded to ``/keys/upload``."""
        return self._account.device_keys()

    # -- sync ----------------------------------------------------------------------------
    def receive_sync(self, body: dict[str, Any], *,
                     key_uploads_at_request: int | None = None) -> SyncResult:
        """Apply a ``/sync`` response body; idempotent; never raises on bad data. Each
        to-device event goes to the handler registered for its type (see ``to_device``); what
        they answer (room key requests, ...) goes out through ``outgoing_requests``.

        ``key_uploads_at_request``: ``key_uploads`` when the sync was requested; a body asked
        for before a later key upload was acknowledged says nothing current about our one-time
        and fallback keys (its counts are ignored). None: the body is current."""
        return self._sync.process(body, key_uploads_at_request)

    @property
    def key_uploads(self) -> int:
        """A count of the key uploads the server acknowledged (of every engine in the process,
        so it stays comparable across an engine rebuilt from the store): read it just before
        sending a ``/sync`` request and pass it to ``receive_sync`` with its answer."""
        return self._account.key_uploads()

    def register_to_device_handler(self, event_types: str | tuple[str, ...],
                                   handler: Handler, *, plaintext: bool = True) -> None:
        """Route to-device events of ``event_types`` (plain or decrypted) to ``handler``."""
        self._router.register(event_types, handler, plaintext=plaintext)

    def refresh_devices(self, users: Iterable[str]) -> None:
        """Query these users' devices (and cross-signing keys) again."""
        self._devices.mark_changed([UserId(u) for u in users])

    def mark_all_tracked_users_dirty(self) -> None:
        """The sync position was lost: device list changes since then were never seen."""
        self._devices.mark_changed(list(self._devices.users))

    def update_room_encryption(self, room_id: str, content: dict[str, Any]) -> None:
        """The shell learned a room's ``m.room.encryption`` content from the server."""
        self._sync.set_encryption(RoomId(room_id), content)

    def update_history_visibility(self, room_id: str, visibility: str) -> None:
        self._sync.state_event(RoomId(room_id), {
            "type": "m.room.history_visibility", "state_key": "",
            "content": {"history_visibility": visibility},
        })

    def update_room_members(self, room_id: str, members: dict[str, str]) -> None:
        """The shell learned memberships (user -> join/invite/leave/ban) from the server."""
        for user, membership in members.items():
            self._sync.set_membership(RoomId(room_id), UserId(user), membership)

    def is_room_encrypted(self, room_id: str) -> bool:
        return self._rooms.is_encrypted(RoomId(room_id))

    def room_encryption_settings(self, room_id: str) -> EncryptionSettings | None:
        return self._rooms.settings(RoomId(room_id))

    def room_members(self, room_id: str) -> list[UserId]:
        """Members who get the room key: joined, and invited unless history visibility is
        ``joined``."""
        return self._rooms.recipients(RoomId(room_id))

    # -- decryption ----------------------------------------------------------------------
    def sessions_needed(self, room_id: str, events: Iterable[Any]
                        ) -> list[tuple[RoomId, SessionId]]:
        """Inbound sessions the store should load before these events are decrypted."""
        keys = []
        for event in events:
            for item in [event, *bundled_events(event)]:
                session_id = megolm_session_id(item)
                if session_id is not None:
                    keys.append((RoomId(room_id), session_id))
        return self._inbound.needed(keys)

    def load_inbound_group_sessions(self, records: Iterable[InboundGroupSessionRecord],
                                    replay_entries: Iterable[ReplayRecord] = ()) -> None:
        """Accept sessions (and their replay entries) loaded from the store."""
        self._inbound.load(records, replay_entries)
        self._key_requests.answer_waiting()  # SyncResult.sessions_to_load: they are here now

    def missing_inbound_group_sessions(self, keys: Iterable[tuple[RoomId, SessionId]]
                                       ) -> list[tuple[RoomId, SessionId]]:
        """Of ``keys``, those this engine holds no copy of at all (call after loading)."""
        return [key for key in dict.fromkeys(keys) if self._inbound.get(*key) is None]

    def add_sibling_sessions(self, records: Iterable[InboundGroupSessionRecord]) -> int:
        """Sessions copied from another device of the same user held by this proxy (the store
        has none of them for this device). Kept as imported: they did not reach this device
        over Olm. Returns how many were new."""
        added = 0
        for record in records:
            export = record.session.export_at(record.first_known_index)
            if export is None:
                continue
            session = vodozemac.InboundGroupSession.import_session(export)
            copy = dataclasses.replace(record, session=session, imported=True)
            added += self._inbound.add(copy, known_absent=True)
        return added

    def decrypt_room_event(self, room_id: str, event: Any) -> Decrypted | DecryptionFailure:
        """Decrypt one Megolm room event; failures are values, never exceptions."""
        try:
            return self._decryptor.decrypt(RoomId(room_id), event)
        except Exception:  # a bug must not take the whole sync down with it
            logger.exception("unexpected error while decrypting a room event")
            return DecryptionFailure(FailureReason.MALFORMED, "internal error")

    def request_room_key(self, room_id: str, event: Any) -> bool:
        """Ask our own verified devices for the room key of ``event`` (undecryptable for want
        of it); once per session until a key comes. True when a request was queued."""
        return self._requester.request(RoomId(room_id), event)

    # -- encryption ----------------------------------------------------------------------
    def share_room_key(self, room_id: str, members: Iterable[str]) -> list[OutgoingRequest]:
        """The next step of sharing the room key with ``members``' devices.

        Returns a ``/keys/query`` (users never queried), else a ``/keys/claim`` (devices without
        an Olm session), else the to-device requests carrying ``m.room_key`` and withheld notices
        (possibly none). Send them, report the answers, and call again until no query or claim
        comes back. Raises ``LocalProtocolError`` for a room not known to be encrypted.
        """
        settings = self._rooms.settings(RoomId(room_id))
        if settings is None:
            raise LocalProtocolError(f"room {room_id} is not known to be encrypted")
        requests = self._sharer.share(RoomId(room_id), [UserId(m) for m in members], settings)
        self._keep_own_session(RoomId(room_id))
        return requests

    def _keep_own_session(self, room_id: RoomId) -> None:
        """Our own messages must decrypt too: keep an inbound copy of each outbound session."""
        record = self._outbound.get(room_id)
        if record is None:
            return
        session_id = SessionId(record.session.session_id)
        if self._inbound.get(room_id, session_id) is not None:
            return
        inbound = vodozemac.InboundGroupSession(record.session.session_key)
        self._inbound.add(InboundGroupSessionRecord(
            room_id, session_id, self._account.curve25519, self._account.ed25519, inbound,
            imported=False, shared_history=record.settings.shared_history,
            first_known_index=inbound.first_known_index,
        ))

    def encrypt(self, room_id: str, event_type: str, content: dict[str, Any]) -> dict[str, Any]:
        """``m.room.encrypted`` content for a room event; the key must have been shared."""
        return self._outbound.encrypt(
            RoomId(room_id), event_type, content, self._rooms.settings(RoomId(room_id)),
            self._account.curve25519, self.device_id, self._clock.now_ms(),
        )

    def discard_room_key(self, room_id: str) -> None:
        """Forget the room's outbound session, e.g. after a failed share."""
        self._outbound.discard(RoomId(room_id))

    # -- trust ---------------------------------------------------------------------------
    def set_local_trust(self, user_id: str, device_id: str, trust: LocalTrust) -> None:
        if not self._devices.set_local_trust(UserId(user_id), DeviceId(device_id), trust):
            raise LocalProtocolError(f"unknown device {user_id} {device_id}")
        if trust is LocalTrust.BLACKLISTED:
            self._outbound.discard_shared_with(UserId(user_id), DeviceId(device_id))

    def set_sharing_strategy(self, strategy: SharingStrategy) -> None:
        self._sharer.strategy = strategy

    def get_device(self, user_id: str, device_id: str) -> DeviceRecord | None:
        return self._devices.get(user_id, device_id)

    def devices_of(self, user_id: str) -> list[DeviceRecord]:
        return self._devices.active_devices(UserId(user_id))

    # -- requests ------------------------------------------------------------------------
    def outgoing_requests(self) -> list[OutgoingRequest]:
        """Requests to send now; each is handed out once until answered or failed."""
        now = self._clock.now_ms()
        if self._account.upload_in_flight is None:
            body = self._account.upload_body(now)
            if body is not None:
                request = api.keys_upload(body)
                self._account.upload_in_flight = request.id
                self._queue.add(request)
        users = self._devices.users_to_query(now)
        for start in range(0, len(users), MAX_QUERY_USERS):
            batch = users[start : start + MAX_QUERY_USERS]
            request = api.keys_query(batch)
            self._devices.query_sent(request.id, batch)
            self._queue.add(request)
        claim = self._claimer.claim_request(self._claimer.wedged_to_claim())
        if claim is not None:
            self._queue.add(claim)
        self.trust.check_timeouts()
        return self._queue.take_unsent()

    def mark_request_as_sent(self, request_id: str, response: Any) -> None:
        """The server answered ``request_id`` successfully with ``response`` (its JSON)."""
        request = self._queue.pop(request_id)
        if request is not None:
            self._on_sent[request.kind](request_id, response)

    def _upload_sent(self, request_id: str, response: Any) -> None:
        self._account.upload_succeeded(response)

    def _query_sent(self, request_id: str, response: Any) -> None:
        update = self._devices.receive_query(request_id, response, self._clock.now_ms())
        for device in update.removed:
            self._outbound.discard_shared_with(device.user_id, device.device_id)
        self.trust.state.receive_query(response, update.users)

    def _claim_sent(self, request_id: str, response: Any) -> None:
        for device in self._claimer.receive(request_id, response):
            self._after_new_session(device)

    def _to_device_sent(self, request_id: str, response: Any) -> None:
        self._outbound.request_done(request_id, success=True)

    def _after_new_session(self, device: DeviceRecord) -> None:
        self._gossip.new_session(device)
        self._key_requests.new_session(device)
        key = (device.user_id, device.device_id)
        if key not in self._claimer.wedged:
            return
        self._claimer.wedged.discard(key)
        content = self._olm.encrypt(device, "m.dummy", {})
        if content is not None:
            messages: dict[str, dict[str, dict[str, Any]]] = {
                device.user_id: {device.device_id: content}
            }
            self._queue.add(api.to_device("m.room.encrypted", messages))
        self._outbound.forget_device(device.user_id, device.device_id)

    def mark_request_as_failed(self, request_id: str, error: object = None) -> None:
        """Sending ``request_id`` failed for good; state is rolled back so it can be redone."""
        request = self._queue.pop(request_id)
        if request is not None:
            self._on_failed[request.kind](request_id)

    def _query_failed(self, request_id: str) -> None:
        self._devices.query_failed(request_id, self._clock.now_ms())

    def _to_device_failed(self, request_id: str) -> None:
        self._outbound.request_done(request_id, success=False)

    def take_changes(self) -> Changes:
        """Everything to persist since the last call; save it before acting on results."""
        return self._log.take()
