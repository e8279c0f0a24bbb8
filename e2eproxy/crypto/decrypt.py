"""Decrypting Megolm room events, with replay checks and bundled relations."""

from __future__ import annotations

import copy
from typing import Any

import vodozemac

from e2eproxy.crypto.changes import ChangeLog, InboundGroupSessionRecord, ReplayRecord
from e2eproxy.crypto.devices import DeviceTracker, device_ed25519
from e2eproxy.crypto.megolm_in import InboundSessions
from e2eproxy.crypto.replay import ReplayVerdict
from e2eproxy.crypto.results import Decrypted, DecryptionFailure, FailureReason, SenderTrust
from e2eproxy.crypto.settings import MEGOLM_ALGORITHM, LocalTrust
from e2eproxy.crypto.trust import DeviceTrust, TrustState
from e2eproxy.crypto.withheld import WithheldNotices
from e2eproxy.protocol.canonical import parse_json
from e2eproxy.types import RoomId, SessionId


def megolm_session_id(event: Any) -> SessionId | None:
    """The session id of an encrypted room event, or None if it is not a Megolm event."""
    if not isinstance(event, dict) or event.get("type") != "m.room.encrypted":
        return None
    content = event.get("content")
    if not isinstance(content, dict) or content.get("algorithm") != MEGOLM_ALGORITHM:
        return None
    session_id = content.get("session_id")
    return SessionId(session_id) if isinstance(session_id, str) else None


def bundled_events(event: Any) -> list[dict[str, Any]]:
    """The encrypted events bundled under ``unsigned.m.relations`` (edits, thread heads)."""
    if not isinstance(event, dict) or not isinstance(event.get("unsigned"), dict):
        return []
    relations = event["unsigned"].get("m.relations")
    if not isinstance(relations, dict):
        return []
    found = []
    replace = relations.get("m.replace")
    if isinstance(replace, dict):
        found.append(replace)
    thread = relations.get("m.thread")
    if isinstance(thread, dict) and isinstance(thread.get("latest_event"), dict):
        found.append(thread["latest_event"])
    return found


_SENDER_TRUST = {
    DeviceTrust.VERIFIED: SenderTrust.VERIFIED,
    DeviceTrust.CROSS_SIGNED: SenderTrust.CROSS_SIGNED,
    DeviceTrust.BLACKLISTED: SenderTrust.BLACKLISTED,
    DeviceTrust.IGNORED: SenderTrust.UNVERIFIED,
    DeviceTrust.UNVERIFIED: SenderTrust.UNVERIFIED,
}


class RoomDecryptor:
    """Turns ``m.room.encrypted`` room events into the events their sender wrote."""

    def __init__(self, inbound: InboundSessions, devices: DeviceTracker, withheld: WithheldNotices,
                 log: ChangeLog) -> None:
        self._inbound = inbound
        self._devices = devices
        self._withheld = withheld
        self._log = log
        self.trust: TrustState | None = None  # set by the machine

    def decrypt(self, room_id: RoomId, event: Any) -> Decrypted | DecryptionFailure:
        result = self._decrypt_one(room_id, event)
        if isinstance(result, Decrypted):
            self._decrypt_bundled(room_id, result.event)
        return result

    def _decrypt_bundled(self, room_id: RoomId, event: dict[str, Any]) -> None:
        unsigned = event.get("unsigned")
        relations = unsigned.get("m.relations") if isinstance(unsigned, dict) else None
        if not isinstance(relations, dict):
            return
        replace = relations.get("m.replace")
        if megolm_session_id(replace) is not None:
            inner = self._decrypt_one(room_id, replace)
            if isinstance(inner, Decrypted):
                relations["m.replace"] = inner.event
        thread = relations.get("m.thread")
        if isinstance(thread, dict) and megolm_session_id(thread.get("latest_event")):
            inner = self._decrypt_one(room_id, thread["latest_event"])
            if isinstance(inner, Decrypted):
                thread["latest_event"] = inner.event

    def _decrypt_one(self, room_id: RoomId, event: Any) -> Decrypted | DecryptionFailure:
        if not isinstance(event, dict) or not isinstance(event.get("content"), dict):
            return DecryptionFailure(FailureReason.MALFORMED, "event has no content object")
        content = event["content"]
        if content.get("algorithm") != MEGOLM_ALGORITHM:
            return DecryptionFailure(FailureReason.UNSUPPORTED_ALGORITHM, "not megolm v1")
        session_id, ciphertext = content.get("session_id"), content.get("ciphertext")
        if not isinstance(session_id, str) or not isinstance(ciphertext, str):
            return DecryptionFailure(FailureReason.MALFORMED, "missing session_id or ciphertext")
        sid = SessionId(session_id)
        record = self._inbound.get(room_id, sid)
        if record is None:
            code = self._withheld.code_for(room_id, sid, event)
            return DecryptionFailure(
                FailureReason.MISSING_SESSION, "no room key for this session", sid, code
            )
        try:
            message = vodozemac.MegolmMessage.from_base64(ciphertext)
        except (ValueError, TypeError):
            return DecryptionFailure(FailureReason.MALFORMED, "bad megolm ciphertext", sid)
        try:
            decrypted = record.session.decrypt(message)
        except ValueError:
            return self._decrypt_error(record, message, sid)
        return self._finish(room_id, event, record, decrypted.plaintext,
                            decrypted.message_index)

    def _decrypt_error(self, record: InboundGroupSessionRecord,
                       message: vodozemac.MegolmMessage, sid: SessionId) -> DecryptionFailure:
        if message.message_index() < record.session.first_known_index:
            return DecryptionFailure(
                FailureReason.UNKNOWN_MESSAGE_INDEX,
                f"first known index is {record.session.first_known_index}",
                sid,
            )
        return DecryptionFailure(FailureReason.DECRYPTION_FAILED, "bad MAC or signature", sid)

    def _finish(self, room_id: RoomId, event: dict[str, Any],
                record: InboundGroupSessionRecord, plaintext: bytes, index: int
                ) -> Decrypted | DecryptionFailure:
        sid = record.session_id
        try:
            payload = parse_json(plaintext)
        except (ValueError, UnicodeDecodeError):
            return DecryptionFailure(FailureReason.PAYLOAD_INVALID, "plaintext is not JSON", sid)
        if not isinstance(payload, dict) or not isinstance(payload.get("type"), str) or (
            not isinstance(payload.get("content"), dict)
        ):
            return DecryptionFailure(FailureReason.PAYLOAD_INVALID, "bad plaintext shape", sid)
        if payload.get("room_id") != room_id:
            return DecryptionFailure(FailureReason.ROOM_MISMATCH, "plaintext names another room",
                                     sid)
        owner = self._devices.by_curve25519(record.sender_key)
        if (
            owner is not None and owner.user_id != event.get("sender")
            and device_ed25519(owner) == record.signing_key
        ):
            # The room key is provably another user's device's: the server (or someone) put
            # this message under a sender who did not write it. A plain client shows no shield,
            # so it is refused rather than shown as theirs (and before the replay table sees it).
            return DecryptionFailure(
                FailureReason.SENDER_MISMATCH, "sent with another user's room key", sid
            )
        event_id = event.get("event_id")
        ts = event.get("origin_server_ts")
        event_id = event_id if isinstance(event_id, str) else ""
        ts = ts if isinstance(ts, int) and not isinstance(ts, bool) else 0
        table = self._inbound.replay_table(room_id, sid)
        if table is not None:
            verdict = table.check(index, event_id, ts)
            if verdict is ReplayVerdict.REPLAYED:
                return DecryptionFailure(FailureReason.REPLAYED,
                                         f"message index {index} seen in another event", sid)
            if verdict is ReplayVerdict.NEW:
                table.record(index, event_id, ts)
                self._log.replay(ReplayRecord(room_id, sid, index, event_id, ts))
        return self._build(event, record, payload, index)

    def _build(self, event: dict[str, Any], record: InboundGroupSessionRecord,
               payload: dict[str, Any], index: int) -> Decrypted:
        # shallow copy of the outer event; ``unsigned`` is copied deeply only when it holds
        # bundled relations (which get rewritten); the content comes fresh from json.loads
        clear = {k: v for k, v in event.items() if k not in ("type", "content")}
        unsigned = clear.get("unsigned")
        if isinstance(unsigned, dict):
            has_relations = "m.relations" in unsigned
            clear["unsigned"] = copy.deepcopy(unsigned) if has_relations else dict(unsigned)
        clear["type"] = payload["type"]
        content = payload["content"]
        outer_relation = event["content"].get("m.relates_to")
        if "m.relates_to" not in content and isinstance(outer_relation, dict):
            content["m.relates_to"] = copy.deepcopy(outer_relation)
        clear["content"] = content
        trust, device_id = self._trust(event.get("sender"), record)
        sender = event.get("sender")
        violation = bool(self.trust and isinstance(sender, str) and self.trust.violation(sender))
        return Decrypted(clear, record.session_id, index, record.sender_key, device_id, trust,
                         violation)

    def _trust(self, sender: Any, record: InboundGroupSessionRecord
               ) -> tuple[SenderTrust, str | None]:
        device = self._devices.by_curve25519(record.sender_key)
        if device is None:
            trust = SenderTrust.IMPORTED if record.imported else SenderTrust.UNKNOWN_DEVICE
            return trust, None
        if device.user_id != sender or device_ed25519(device) != record.signing_key:
            return SenderTrust.MISMATCHED_SENDER, device.device_id
        if record.imported:
            return SenderTrust.IMPORTED, device.device_id
        if self.trust is not None:
            return _SENDER_TRUST[self.trust.device_trust(device)], device.device_id
        if device.local_trust is LocalTrust.VERIFIED:
            return SenderTrust.VERIFIED, device.device_id
        if device.local_trust is LocalTrust.BLACKLISTED:
            return SenderTrust.BLACKLISTED, device.device_id
        return SenderTrust.UNVERIFIED, device.device_id
