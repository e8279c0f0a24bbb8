"""Olm sessions: creating them from claimed keys, encrypting to devices, decrypting to-device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import vodozemac

from e2eproxy.crypto.account import AccountState
from e2eproxy.crypto.changes import ChangeLog, DeviceRecord, OlmSessionRecord
from e2eproxy.crypto.clock import Clock
from e2eproxy.crypto.devices import DeviceTracker, device_curve25519, device_ed25519
from e2eproxy.crypto.settings import OLM_ALGORITHM
from e2eproxy.protocol.canonical import (
    b64decode,
    b64encode,
    canonical_json,
    parse_json,
    verify_json,
)

# Olm sessions kept per peer device, the least recently used expired first (the spec: "at least
# 4"; matrix-rust-sdk keeps them all, mautrix-go 5): a peer that keeps opening sessions (by
# pre-key messages, or a wedged device that recovers every hour) cannot grow them without end.
MAX_SESSIONS_PER_DEVICE = 5


@dataclass(frozen=True, slots=True)
class OlmDecrypted:
    """A checked Olm payload: who sent it (both keys) and the inner event."""

    sender: str
    sender_key: str
    sender_ed25519: str
    event_type: str
    content: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OlmFailure:
    """Why a to-device Olm event was dropped; ``wedged`` asks for MSC1719 recovery."""

    reason: str
    sender_key: str | None = None
    wedged: bool = False


class OlmSessions:
    """All Olm sessions, grouped by the peer's Curve25519 key."""

    def __init__(self, account: AccountState, devices: DeviceTracker, clock: Clock,
                 log: ChangeLog) -> None:
        self._account = account
        self._devices = devices
        self._clock = clock
        self._log = log
        self._sessions: dict[str, list[OlmSessionRecord]] = {}

    def load(self, records: list[OlmSessionRecord]) -> None:
        for record in records:
            self._sessions.setdefault(record.sender_key, []).append(record)
        for sender_key in list(self._sessions):
            self._expire(sender_key)  # a store written before the cap may hold more

    def has_session(self, curve25519: str) -> bool:
        return bool(self._sessions.get(curve25519))

    def _add(self, sender_key: str, session: vodozemac.Session, received: bool) -> None:
        now = self._clock.now_ms()
        record = OlmSessionRecord(
            sender_key, session.session_id, session, now, now, now if received else 0
        )
        self._sessions.setdefault(sender_key, []).append(record)
        self._log.olm_session(record)
        self._expire(sender_key)

    def _expire(self, sender_key: str) -> None:
        """Keep the ``MAX_SESSIONS_PER_DEVICE`` most recently used sessions with a device."""
        sessions = self._sessions[sender_key]
        if len(sessions) <= MAX_SESSIONS_PER_DEVICE:
            return
        ranked = sorted(enumerate(sessions), key=_recency, reverse=True)
        kept = {index for index, _ in ranked[:MAX_SESSIONS_PER_DEVICE]}
        for index, record in enumerate(sessions):
            if index not in kept:
                self._log.olm_session_removed(record.session_id)
        self._sessions[sender_key] = [r for i, r in enumerate(sessions) if i in kept]

    # -- outbound ------------------------------------------------------------------------
    def create_outbound(self, device: DeviceRecord, claimed: Any) -> bool:
        """Create a session from a ``/keys/claim`` answer for ``device``; False if unusable."""
        if not isinstance(claimed, dict):
            return False
        for key_id, key_obj in claimed.items():
            if not isinstance(key_id, str) or not key_id.startswith("signed_curve25519:"):
                continue
            ed25519 = device_ed25519(device)
            signer_key = f"ed25519:{device.device_id}"
            if not verify_json(key_obj, device.user_id, signer_key, ed25519):
                return False
            try:
                identity = vodozemac.Curve25519PublicKey.from_base64(device_curve25519(device))
                otk = vodozemac.Curve25519PublicKey.from_base64(key_obj["key"])
                session = self._account.account.create_outbound_session(identity, otk)
            except (ValueError, KeyError, TypeError):
                return False
            self._add(device_curve25519(device), session, received=False)
            return True
        return False

    def encrypt(self, device: DeviceRecord, event_type: str, content: dict[str, Any]
                ) -> dict[str, Any] | None:
        """``m.room.encrypted`` to-device content for ``device``; None without a session."""
        curve = device_curve25519(device)
        sessions = self._sessions.get(curve)
        if not sessions:
            return None
        # MSC1719: the session that most recently received (or was created); newest on ties
        _, record = max(enumerate(sessions), key=_recency)
        payload = {
            "sender": self._account.user_id,
            "keys": {"ed25519": self._account.ed25519},
            "recipient": device.user_id,
            "recipient_keys": {"ed25519": device_ed25519(device)},
            # MSC4147 (spec 1.15): a recipient that has not fetched our keys yet can still
            # check who we are; matrix-rust-sdk drops a non-room-key event without it then.
            "sender_device_keys": self._account.device_keys(),
            "type": event_type,
            "content": content,
        }
        message_type, body = record.session.encrypt(canonical_json(payload)).to_parts()
        record.last_used_ms = self._clock.now_ms()
        self._log.olm_session(record)
        return {
            "algorithm": OLM_ALGORITHM,
            "sender_key": self._account.curve25519,
            "ciphertext": {curve: {"type": message_type, "body": b64encode(body)}},
        }

    # -- inbound -------------------------------------------------------------------------
    def decrypt(self, event: dict[str, Any]) -> OlmDecrypted | OlmFailure:
        """Decrypt and check one to-device ``m.room.encrypted`` event; never raises."""
        content = event.get("content")
        sender = event.get("sender")
        if not isinstance(content, dict) or not isinstance(sender, str):
            return OlmFailure("malformed")
        if content.get("algorithm") != OLM_ALGORITHM:
            return OlmFailure("unsupported_algorithm")
        sender_key = content.get("sender_key")
        ciphertext = content.get("ciphertext")
        if not isinstance(sender_key, str) or not isinstance(ciphertext, dict):
            return OlmFailure("malformed")
        mine = ciphertext.get(self._account.curve25519)
        if not isinstance(mine, dict):
            return OlmFailure("not_for_us", sender_key)
        message_type, body = mine.get("type"), mine.get("body")
        if message_type not in (0, 1) or isinstance(message_type, bool) or not isinstance(
            body, str
        ):
            return OlmFailure("malformed", sender_key)
        try:
            message = vodozemac.AnyOlmMessage.from_parts(message_type, b64decode(body))
        except ValueError:
            return OlmFailure("malformed", sender_key)
        plaintext = self._decrypt_message(sender_key, message)
        if isinstance(plaintext, OlmFailure):
            return plaintext
        return self._check_payload(sender, sender_key, plaintext)

    def _decrypt_message(
        self, sender_key: str, message: vodozemac.AnyOlmMessage
    ) -> bytes | OlmFailure:
        sessions = sorted(
            self._sessions.get(sender_key, []), key=lambda s: s.last_received_ms, reverse=True
        )
        pre_key = message.to_pre_key()
        for record in sessions:
            if pre_key is not None and not record.session.session_matches(pre_key):
                continue
            try:
                plaintext = record.session.decrypt(message)
            except ValueError:
                if pre_key is not None:
                    return OlmFailure("decryption_failed", sender_key, wedged=True)
                continue
            record.last_received_ms = self._clock.now_ms()
            self._log.olm_session(record)
            return plaintext
        if pre_key is None:
            return OlmFailure("no_matching_session", sender_key, wedged=True)
        try:
            identity = vodozemac.Curve25519PublicKey.from_base64(sender_key)
            session, plaintext = self._account.account.create_inbound_session(identity, pre_key)
        except ValueError:
            return OlmFailure("session_creation_failed", sender_key, wedged=True)
        self._add(sender_key, session, received=True)
        self._log.account(self._account.record)  # the one-time key is gone now
        return plaintext

    def _check_payload(self, sender: str, sender_key: str, plaintext: bytes
                       ) -> OlmDecrypted | OlmFailure:
        try:
            payload = parse_json(plaintext)
        except (ValueError, UnicodeDecodeError):
            return OlmFailure("payload_invalid", sender_key)
        if not isinstance(payload, dict):
            return OlmFailure("payload_invalid", sender_key)
        recipient_keys = payload.get("recipient_keys")
        keys = payload.get("keys")
        event_type, content = payload.get("type"), payload.get("content")
        if payload.get("sender") != sender:
            return OlmFailure("mismatched_sender", sender_key)
        if payload.get("recipient") != self._account.user_id:
            return OlmFailure("wrong_recipient", sender_key)
        if not isinstance(recipient_keys, dict) or (
            recipient_keys.get("ed25519") != self._account.ed25519
        ):
            return OlmFailure("wrong_recipient_keys", sender_key)
        if not isinstance(keys, dict) or not isinstance(keys.get("ed25519"), str):
            return OlmFailure("payload_invalid", sender_key)
        if not isinstance(event_type, str) or not isinstance(content, dict):
            return OlmFailure("payload_invalid", sender_key)
        if not _sender_device_keys_valid(payload, sender, sender_key, keys["ed25519"]):
            return OlmFailure("sender_device_keys_invalid", sender_key)
        known = self._devices.by_curve25519(sender_key)
        if known is not None and (
            known.user_id != sender or device_ed25519(known) != keys["ed25519"]
        ):
            return OlmFailure("mismatched_keys", sender_key)
        return OlmDecrypted(sender, sender_key, keys["ed25519"], event_type, content)


def _recency(item: tuple[int, OlmSessionRecord]) -> tuple[int, int]:
    """How recently a session (at its position in a device's list) was used, as the spec
    orders them: the last message received on it, else its creation; the newer on ties."""
    index, record = item
    return max(record.created_ms, record.last_received_ms), index


def _sender_device_keys_valid(payload: dict[str, Any], sender: str, sender_key: str,
                              ed25519: str) -> bool:
    """The spec's checks of MSC4147's ``sender_device_keys``, when a payload carries them: the
    sender's own signed device keys, naming the keys this message came with."""
    device_keys = payload.get("sender_device_keys", payload.get("org.matrix.msc4147.device_keys"))
    if device_keys is None:
        return True
    if not isinstance(device_keys, dict) or device_keys.get("user_id") != sender:
        return False
    device_id, keys = device_keys.get("device_id"), device_keys.get("keys")
    if not isinstance(device_id, str) or not isinstance(keys, dict):
        return False
    if keys.get(f"curve25519:{device_id}") != sender_key:
        return False
    if keys.get(f"ed25519:{device_id}") != ed25519:
        return False
    return verify_json(device_keys, sender, f"ed25519:{device_id}", ed25519)
