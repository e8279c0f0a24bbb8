"""Sharing a room's Megolm key with every eligible device, and withholding it from the rest."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from e2eproxy.crypto.account import AccountState
from e2eproxy.crypto.changes import DeviceRecord, OutboundGroupSessionRecord
from e2eproxy.crypto.claims import OlmClaimer
from e2eproxy.crypto.clock import Clock
from e2eproxy.crypto.devices import DeviceTracker, device_curve25519, server_of
from e2eproxy.crypto.megolm_out import OutboundSessions
from e2eproxy.crypto.olm import OlmSessions
from e2eproxy.crypto.requests import RequestQueue
from e2eproxy.crypto.settings import (
    MEGOLM_ALGORITHM,
    EncryptionSettings,
    LocalTrust,
    SharingStrategy,
)
from e2eproxy.crypto.trust import DeviceTrust, TrustState
from e2eproxy.protocol import api
from e2eproxy.protocol.api import OutgoingRequest
from e2eproxy.types import DeviceId, RoomId, UserId

logger = logging.getLogger(__name__)

MAX_TO_DEVICE_MESSAGES = 250
TRUSTED = (LocalTrust.VERIFIED, LocalTrust.IGNORED)
# Sessions whose withheld notices we remember sending (to send each once): a bound for a proxy
# that runs for months; forgetting an old one at worst repeats a notice.
MAX_WITHHELD_SESSIONS = 1_000
WITHHELD_REASONS = {
    "m.blacklisted": "You have been blocked by this device.",
    "m.unverified": "This device does not share keys with unverified devices.",
    "m.no_olm": "Unable to establish a secure channel.",
}


@dataclass(slots=True)
class Recipients:
    share: list[DeviceRecord] = field(default_factory=list)
    withheld: list[tuple[DeviceRecord, str]] = field(default_factory=list)


class KeySharer:
    """The steps of ``share_room_key``: query, claim, then encrypt ``m.room_key`` per device."""

    def __init__(self, account: AccountState, devices: DeviceTracker, olm: OlmSessions,
                 claimer: OlmClaimer, outbound: OutboundSessions, queue: RequestQueue,
                 clock: Clock) -> None:
        self._account = account
        self._devices = devices
        self._olm = olm
        self._claimer = claimer
        self._outbound = outbound
        self._queue = queue
        self._clock = clock
        self.strategy = SharingStrategy.ALL_EXCEPT_BLACKLISTED
        self.trust: TrustState | None = None  # set by the machine
        self._withheld_sent: dict[str, set[tuple[UserId, DeviceId]]] = {}

    def share(self, room_id: RoomId, members: list[UserId], settings: EncryptionSettings
              ) -> list[OutgoingRequest]:
        """One step: the query, or the claim, or the to-device requests (see the facade)."""
        users = sorted(set(members) | {self._account.user_id})
        self._devices.track(users)
        now = self._clock.now_ms()
        # Members never queried, or whose device list changed since (a new device), are asked
        # here, even when the background worker's query for them is still in flight: skipping
        # them would leave their (new) devices without the key. A duplicate answer is harmless
        # (sequence numbers guard the dirty flags).
        never = [
            u for u in users
            if self._devices.is_outdated(u)
            and not self._devices.server_failures.is_failing(server_of(u), now)
        ]
        if never:
            request = api.keys_query(never)
            self._devices.query_sent(request.id, never)
            return [self._queue.add(request, in_flight=True)]
        recipients = self._collect(users)
        missing = [d for d in recipients.share if not self._olm.has_session(device_curve25519(d))]
        claim = self._claimer.claim_request(missing, sharing=True)
        if claim is not None:
            return [self._queue.add(claim, in_flight=True)]
        record = self._session_for(room_id, settings, set(users), recipients.share)
        # Shares of this session saved but never sent (the engine was restored after a crash,
        # or rebuilt after a failed commit): sent now as they were, so encrypt need not wait
        # for the background to get round to them.
        unsent = self._queue.take(record.pending_requests)
        return unsent + self._to_device(record, recipients)

    def _collect(self, users: list[UserId]) -> Recipients:
        result = Recipients()
        for user in users:
            for device in self._devices.active_devices(user):
                if user == self._account.user_id and device.device_id == self._account.device_id:
                    continue
                code = self._withhold_code(device)
                if code is None:
                    result.share.append(device)
                else:
                    result.withheld.append((device, code))
        return result

    def _withhold_code(self, device: DeviceRecord) -> str | None:
        """Why ``device`` gets no key under the strategy (a withheld code), or None."""
        if device.local_trust is LocalTrust.BLACKLISTED:
            return "m.blacklisted"
        trust = self.trust
        if trust is None:
            wanted = self.strategy is SharingStrategy.ALL_EXCEPT_BLACKLISTED
            return None if wanted or device.local_trust in TRUSTED else "m.unverified"
        if device.user_id != self._account.user_id and trust.violation(device.user_id):
            return "m.unverified"  # we verified this user once; their identity changed since
        level = trust.device_trust(device)
        if self.strategy is SharingStrategy.CROSS_SIGNED:
            ok = level in (DeviceTrust.VERIFIED, DeviceTrust.CROSS_SIGNED, DeviceTrust.IGNORED)
            return None if ok else "m.unverified"
        if self.strategy is SharingStrategy.ONLY_VERIFIED:
            ok = level in (DeviceTrust.VERIFIED, DeviceTrust.IGNORED)
            return None if ok else "m.unverified"
        return None

    def _session_for(self, room_id: RoomId, settings: EncryptionSettings, users: set[UserId],
                     share: list[DeviceRecord]) -> OutboundGroupSessionRecord:
        now = self._clock.now_ms()
        record = self._outbound.get(room_id)
        allowed = {(d.user_id, d.device_id) for d in share}
        if record is not None:
            overshared = any(
                user not in users or (user, device) not in allowed
                for user, devices in record.shared_with.items()
                for device in devices
            )
            if overshared or self._outbound.expired(record, settings, now):
                record = None
        if record is None:
            record = self._outbound.create(room_id, settings, now)
        return record

    def _room_key(self, record: OutboundGroupSessionRecord) -> dict[str, Any]:
        shared_history = record.settings.shared_history
        return {
            "algorithm": MEGOLM_ALGORITHM,
            "room_id": record.room_id,
            "session_id": record.session.session_id,
            "session_key": record.session.session_key.to_base64(),
            # The stable name only: matrix-rust-sdk reads the MSC3061 name as an alias of it
            # and drops a key that carries both ("duplicate field").
            "m.shared_history": shared_history,
        }

    def _to_device(self, record: OutboundGroupSessionRecord, recipients: Recipients
                   ) -> list[OutgoingRequest]:
        room_key = self._room_key(record)
        encrypted: list[tuple[DeviceRecord, dict[str, Any]]] = []
        withheld = [
            (device, code) for device, code in recipients.withheld
            if self._note_withheld(record, device)
        ]
        for device in recipients.share:
            if device.device_id in record.shared_with.get(device.user_id, {}):
                continue
            content = self._olm.encrypt(device, "m.room_key", room_key)
            if content is not None:
                encrypted.append((device, content))
                self._outbound.mark_shared_with(record, device.user_id, device.device_id)
            elif not device.no_olm_sent:
                device.no_olm_sent = True
                self._devices.save(device)
                withheld.append((device, "m.no_olm"))
        if encrypted or withheld:
            logger.debug(
                "room key %s of %s: sending to %s, withheld from %s", record.session.session_id,
                record.room_id, [f"{d.user_id}/{d.device_id}" for d, _ in encrypted],
                [f"{d.user_id}/{d.device_id}:{code}" for d, code in withheld],
            )
        requests: list[OutgoingRequest] = []
        for chunk in _chunks(encrypted):
            request = api.to_device("m.room.encrypted", _messages(chunk))
            self._outbound.add_pending(record, request.id)
            requests.append(self._queue.add(request, in_flight=True))
        notices = [(d, self._withheld_content(record, code)) for d, code in withheld]
        for chunk in _chunks(notices):
            request = api.to_device("m.room_key.withheld", _messages(chunk))
            requests.append(self._queue.add(request, in_flight=True))
        self._outbound.mark_shared_if_idle(record)
        return requests

    def _note_withheld(self, record: OutboundGroupSessionRecord, device: DeviceRecord) -> bool:
        session_id = record.session.session_id
        remembered = self._withheld_sent
        if session_id not in remembered and len(remembered) >= MAX_WITHHELD_SESSIONS:
            # Oldest first (insertion order): those sessions have long been rotated away.
            del remembered[next(iter(remembered))]
        sent = remembered.setdefault(session_id, set())
        key = (device.user_id, device.device_id)
        if key in sent:
            return False
        sent.add(key)
        return True

    def _withheld_content(self, record: OutboundGroupSessionRecord, code: str) -> dict[str, Any]:
        content: dict[str, Any] = {
            "algorithm": MEGOLM_ALGORITHM,
            "code": code,
            "reason": WITHHELD_REASONS.get(code, "Withheld."),
            "sender_key": self._account.curve25519,
            "from_device": self._account.device_id,
        }
        if code != "m.no_olm":
            content["room_id"] = record.room_id
            content["session_id"] = record.session.session_id
        return content


def _chunks(
    items: list[tuple[DeviceRecord, dict[str, Any]]],
) -> list[list[tuple[DeviceRecord, dict[str, Any]]]]:
    return [
        items[i : i + MAX_TO_DEVICE_MESSAGES] for i in range(0, len(items), MAX_TO_DEVICE_MESSAGES)
    ]


def _messages(
    chunk: list[tuple[DeviceRecord, dict[str, Any]]],
) -> dict[str, dict[str, dict[str, Any]]]:
    messages: dict[str, dict[str, dict[str, Any]]] = {}
    for device, content in chunk:
        messages.setdefault(device.user_id, {})[device.device_id] = content
    return messages
