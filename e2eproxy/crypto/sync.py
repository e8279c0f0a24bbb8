"""``receive_sync``: to-device decryption, device lists, key counts and room state."""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import vodozemac

from e2eproxy.crypto.account import AccountState
from e2eproxy.crypto.changes import ChangeLog, InboundGroupSessionRecord
from e2eproxy.crypto.claims import OlmClaimer
from e2eproxy.crypto.devices import DeviceTracker, device_ed25519
from e2eproxy.crypto.megolm_in import InboundSessions
from e2eproxy.crypto.megolm_out import OutboundSessions
from e2eproxy.crypto.olm import OlmDecrypted, OlmFailure, OlmSessions
from e2eproxy.crypto.results import RoomKeyInfo, SyncResult, ToDeviceFailure
from e2eproxy.crypto.rooms import ACTIVE_MEMBERSHIPS, RoomStates
from e2eproxy.crypto.settings import MEGOLM_ALGORITHM
from e2eproxy.crypto.to_device import ToDeviceEvent, ToDeviceRouter, ToDeviceSender
from e2eproxy.crypto.withheld import WithheldNotices
from e2eproxy.protocol.canonical import canonical_json
from e2eproxy.types import RoomId, SessionId, UserId

logger = logging.getLogger(__name__)
MAX_SEEN_HASHES = 50_000


@dataclass(slots=True)
class Parts:
    """The engine components a sync touches."""

    account: AccountState
    devices: DeviceTracker
    olm: OlmSessions
    claimer: OlmClaimer
    inbound: InboundSessions
    outbound: OutboundSessions
    rooms: RoomStates
    withheld: WithheldNotices
    log: ChangeLog


def _list(value: Any, *path: str) -> list[Any]:
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, list) else []


def _dict(value: Any, *path: str) -> dict[str, Any]:
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, dict) else {}


class SyncProcessor:
    """Applies one ``/sync`` body to the engine state."""

    def __init__(self, parts: Parts, now_ms: Any, router: ToDeviceRouter) -> None:
        self._p = parts
        self._now_ms = now_ms
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.inbound_complete = False
        self.router = router
        router.register("m.room.encrypted", self._olm_event)
        router.register("m.room_key", self._room_key_event, plaintext=False)
        parts.withheld.register(router)
        # MSC1719: a new session's first message, to unwedge it; nothing to do beyond decrypting.
        router.register("m.dummy", lambda event, result: None, plaintext=False)

    def load_hashes(self, hashes: list[str]) -> None:
        for digest in hashes[-MAX_SEEN_HASHES:]:
            self._seen[digest] = None

    def process(self, body: Any, key_uploads: int | None = None) -> SyncResult:
        result = SyncResult()
        if not isinstance(body, dict):
            return result
        # No de-duplication by ``next_batch``: two streams (the client's and ours) reach the same
        # token from different ``since`` tokens and filters, with different contents (an initial
        # sync lists no device list changes). Every part below is idempotent on its own.
        for event in _list(body, "to_device", "events"):
            try:
                self._to_device(event, result)
            except Exception:  # a bug must not lose the rest of the batch
                logger.exception("unexpected error while handling a to-device event")
                result.failures.append(ToDeviceFailure("", "", "internal_error"))
        self._device_lists(_dict(body, "device_lists"))
        self._p.account.update_counts(
            body.get("device_one_time_keys_count"),
            body.get("device_unused_fallback_key_types"),
            self._now_ms(),
            key_uploads,
        )
        self._rooms(_dict(body, "rooms"))
        return result

    def _device_lists(self, lists: dict[str, Any]) -> None:
        changed = [UserId(u) for u in _list(lists, "changed") if isinstance(u, str)]
        left = [UserId(u) for u in _list(lists, "left") if isinstance(u, str)]
        if changed or left:
            logger.debug("device lists changed: %s, left: %s", changed, left)
        self._p.devices.mark_changed(changed)
        self._p.devices.untrack(left)

    # -- to-device -----------------------------------------------------------------------
    def _digest(self, event: dict[str, Any]) -> str:
        content = event.get("content")
        material: Any = content.get("ciphertext") if isinstance(content, dict) else None
        if material is None:
            material = [event.get("type"), event.get("sender"), content]
        try:
            data = canonical_json(material)
        except Exception:  # canonicaljson rejects floats and odd values
            data = repr(material).encode()
        return hashlib.sha256(data).hexdigest()

    def _to_device(self, event: Any, result: SyncResult) -> None:
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            result.failures.append(ToDeviceFailure("", "", "malformed"))
            return
        digest = self._digest(event)
        if digest in self._seen:
            return
        self._seen[digest] = None
        if len(self._seen) > MAX_SEEN_HASHES:
            self._seen.popitem(last=False)
        self._p.log.to_device_hash(digest)
        result.to_device_types.append(event["type"])
        sender = event.get("sender")
        content = event.get("content")
        plain = ToDeviceEvent(
            event["type"], content if isinstance(content, dict) else {},
            ToDeviceSender(sender if isinstance(sender, str) else ""), encrypted=False,
        )
        self.router.dispatch(plain, result)

    def _olm_event(self, event: ToDeviceEvent, result: SyncResult) -> None:
        sender = event.sender.user_id
        decrypted = self._p.olm.decrypt({"sender": sender, "content": event.content})
        if isinstance(decrypted, OlmFailure):
            result.failures.append(ToDeviceFailure(sender, "m.room.encrypted", decrypted.reason))
            if decrypted.wedged and decrypted.sender_key is not None:
                self._p.claimer.mark_wedged(sender, decrypted.sender_key)
            return
        if decrypted.event_type == "m.room.encrypted":
            result.failures.append(ToDeviceFailure(sender, "m.room.encrypted", "nested"))
            return
        device = self._p.devices.by_curve25519(decrypted.sender_key)
        if device is not None and (
            device.user_id != sender or device_ed25519(device) != decrypted.sender_ed25519
        ):
            device = None
        if result.to_device_types:  # the event _to_device listed last: counted as its payload
            result.to_device_types[-1] = decrypted.event_type
        identity = ToDeviceSender(sender, decrypted.sender_key, decrypted.sender_ed25519, device)
        inner = ToDeviceEvent(decrypted.event_type, decrypted.content, identity, encrypted=True)
        self.router.dispatch(inner, result)

    def _room_key_event(self, event: ToDeviceEvent, result: SyncResult) -> None:
        sender = event.sender
        assert sender.curve25519 is not None and sender.ed25519 is not None  # encrypted only
        self._room_key(OlmDecrypted(sender.user_id, sender.curve25519, sender.ed25519,
                                    event.type, event.content), result)

    def _room_key(self, decrypted: OlmDecrypted, result: SyncResult) -> None:
        content = decrypted.content
        room_id, session_id = content.get("room_id"), content.get("session_id")
        session_key = content.get("session_key")
        if (
            content.get("algorithm") != MEGOLM_ALGORITHM
            or not isinstance(room_id, str)
            or not isinstance(session_id, str)
            or not isinstance(session_key, str)
        ):
            result.failures.append(ToDeviceFailure(decrypted.sender, "m.room_key", "malformed"))
            return
        try:
            session = vodozemac.InboundGroupSession(vodozemac.SessionKey(session_key))
        except (ValueError, TypeError):
            result.failures.append(ToDeviceFailure(decrypted.sender, "m.room_key", "bad_key"))
            return
        if session.session_id != session_id:
            result.failures.append(ToDeviceFailure(decrypted.sender, "m.room_key", "bad_key"))
            return
        shared = content.get("m.shared_history", content.get("org.matrix.msc3061.shared_history"))
        record = InboundGroupSessionRecord(
            RoomId(room_id), SessionId(session_id), decrypted.sender_key,
            decrypted.sender_ed25519, session, imported=False, shared_history=shared is True,
            first_known_index=session.first_known_index,
        )
        if self._p.inbound.add(record, known_absent=self.inbound_complete):
            self._p.withheld.discard(record.room_id, record.session_id)
            result.room_keys.append(
                RoomKeyInfo(record.room_id, record.session_id, record.first_known_index)
            )

    # -- rooms ---------------------------------------------------------------------------
    def _rooms(self, rooms: dict[str, Any]) -> None:
        for section, paths in (
            ("join", (("state", "events"), ("timeline", "events"))),
            ("leave", (("state", "events"), ("timeline", "events"))),
            ("invite", (("invite_state", "events"),)),
        ):
            for room_id, room in _dict(rooms, section).items():
                for path in paths:
                    for event in _list(room, *path):
                        self.state_event(RoomId(room_id), event)

    def state_event(self, room_id: RoomId, event: Any) -> None:
        """Apply one state event we learned about (from sync or from the shell)."""
        if not isinstance(event, dict) or not isinstance(event.get("state_key"), str):
            return
        content = event.get("content")
        if not isinstance(content, dict):
            return
        event_type = event.get("type")
        if event_type == "m.room.encryption":
            self.set_encryption(room_id, content)
        elif event_type == "m.room.history_visibility":
            if self._p.rooms.set_history_visibility(room_id, content.get("history_visibility")):
                self._p.outbound.discard(room_id)
        elif event_type == "m.room.member":
            membership = content.get("membership")
            if isinstance(membership, str):
                self.set_membership(room_id, UserId(event["state_key"]), membership)

    def set_encryption(self, room_id: RoomId, content: Any) -> None:
        was_encrypted = self._p.rooms.is_encrypted(room_id)
        if self._p.rooms.set_encryption(room_id, content):
            self._p.outbound.discard(room_id)
            if not was_encrypted:
                self._p.devices.track(self._p.rooms.active_members(room_id))

    def set_membership(self, room_id: RoomId, user: UserId, membership: str) -> None:
        previous = self._p.rooms.set_membership(room_id, user, membership)
        if previous is None:
            return
        if membership in ACTIVE_MEMBERSHIPS:
            if self._p.rooms.is_encrypted(room_id):
                self._p.devices.track([user])
            return
        record = self._p.outbound.get(room_id)
        if record is not None and user in record.shared_with:
            self._p.outbound.discard(room_id)
