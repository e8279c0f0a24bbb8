"""Outbound Megolm sessions: one per room, rotation rules, encrypting room events."""

from __future__ import annotations

import copy
from typing import Any

import vodozemac

from e2eproxy.crypto.changes import ChangeLog, OutboundGroupSessionRecord
from e2eproxy.crypto.settings import MEGOLM_ALGORITHM, EncryptionSettings
from e2eproxy.errors import LocalProtocolError
from e2eproxy.protocol.canonical import canonical_json
from e2eproxy.types import DeviceId, RoomId, UserId


class OutboundSessions:
    """The current outbound session of each room and the rules for replacing it."""

    def __init__(self, log: ChangeLog) -> None:
        self._log = log
        self.sessions: dict[RoomId, OutboundGroupSessionRecord] = {}
        self._by_request: dict[str, RoomId] = {}

    def load(self, records: list[OutboundGroupSessionRecord]) -> None:
        for record in records:
            self.sessions[record.room_id] = record
            for request_id in record.pending_requests:
                self._by_request[request_id] = record.room_id

    def get(self, room_id: RoomId) -> OutboundGroupSessionRecord | None:
        return self.sessions.get(room_id)

    def expired(self, record: OutboundGroupSessionRecord, settings: EncryptionSettings,
                now_ms: int) -> bool:
        """True when the session must not be used for another message."""
        return (
            record.message_count >= settings.rotation_period_msgs
            or now_ms - record.created_ms >= settings.rotation_period_ms
            or record.settings != settings
        )

    def create(self, room_id: RoomId, settings: EncryptionSettings, now_ms: int
               ) -> OutboundGroupSessionRecord:
        self.discard(room_id)
        record = OutboundGroupSessionRecord(
            room_id, vodozemac.GroupSession(), now_ms, 0, settings, {}, set(), shared=False
        )
        self.sessions[room_id] = record
        self._log.outbound(record)
        return record

    def discard(self, room_id: RoomId) -> bool:
        """Forget the room's session (the next share makes a new one)."""
        record = self.sessions.pop(room_id, None)
        if record is None:
            return False
        for request_id in record.pending_requests:
            self._by_request.pop(request_id, None)
        self._log.outbound_removed(room_id)
        return True

    def discard_shared_with(self, user_id: UserId, device_id: DeviceId | None = None) -> None:
        """Rotate every room whose session went to this user (or this one device)."""
        for room_id, record in list(self.sessions.items()):
            devices = record.shared_with.get(user_id)
            if devices is None:
                continue
            if device_id is None or device_id in devices:
                self.discard(room_id)

    def forget_device(self, user_id: UserId, device_id: DeviceId) -> None:
        """The device needs the current keys again (e.g. after a new Olm session)."""
        for record in self.sessions.values():
            if record.shared_with.get(user_id, {}).pop(device_id, None) is not None:
                self._log.outbound(record)

    def add_pending(self, record: OutboundGroupSessionRecord, request_id: str) -> None:
        record.pending_requests.add(request_id)
        self._by_request[request_id] = record.room_id
        self._log.outbound(record)

    def mark_shared_with(self, record: OutboundGroupSessionRecord, user_id: UserId,
                         device_id: DeviceId) -> None:
        record.shared_with.setdefault(user_id, {})[device_id] = record.session.message_index

    def request_done(self, request_id: str, success: bool) -> None:
        """A to-device request carrying a room key finished; failure discards the session so
        nobody is left holding a session its recipients lack."""
        room_id = self._by_request.pop(request_id, None)
        record = self.sessions.get(room_id) if room_id is not None else None
        if record is None or request_id not in record.pending_requests:
            return
        if not success:
            self.discard(record.room_id)
            return
        record.pending_requests.discard(request_id)
        if not record.pending_requests:
            record.shared = True
        self._log.outbound(record)

    def mark_shared_if_idle(self, record: OutboundGroupSessionRecord) -> None:
        if not record.pending_requests and not record.shared:
            record.shared = True
            self._log.outbound(record)

    def encrypt(self, room_id: RoomId, event_type: str, content: dict[str, Any],
                settings: EncryptionSettings | None, sender_key: str, device_id: str,
                now_ms: int) -> dict[str, Any]:
        """``m.room.encrypted`` content; LocalProtocolError if there is no usable session."""
        record = self.sessions.get(room_id)
        if settings is None:
            raise LocalProtocolError(f"room {room_id} is not known to be encrypted")
        if record is None or not record.shared or record.pending_requests:
            raise LocalProtocolError(f"the room key for {room_id} has not been shared yet")
        if self.expired(record, settings, now_ms):
            raise LocalProtocolError(f"the room key for {room_id} must be rotated and shared")
        payload = {"type": event_type, "content": content, "room_id": room_id}
        ciphertext = record.session.encrypt(canonical_json(payload)).to_base64()
        record.message_count += 1
        self._log.outbound(record)
        result: dict[str, Any] = {
            "algorithm": MEGOLM_ALGORITHM,
            "sender_key": sender_key,
            "ciphertext": ciphertext,
            "session_id": record.session.session_id,
            "device_id": device_id,
        }
        relation = content.get("m.relates_to")
        if isinstance(relation, dict):
            result["m.relates_to"] = copy.deepcopy(relation)
        return result
