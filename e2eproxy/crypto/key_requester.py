"""Asking our own verified devices for a room key we lack (``m.room_key_request``), and taking
their answer (``m.forwarded_room_key``).

The policy is matrix-rust-sdk's (``GossipMachine``) and the spec's ("only request and accept
forwarded keys from verified devices of the same user"):

- a request goes out only if one of our other devices is verified, one per session: it stays
  pending until a key is accepted for it (rust-sdk has no timer that asks again; here the pending
  set lives in memory, so a restart is what lets a session be asked for again);
- a forwarded key counts only Olm-encrypted, from a device of our own user known by the keys it
  sent with and verified, for a session we asked for; it is kept as *imported* under the
  better-copy rule, and once kept the request is cancelled on the other devices we asked.

rust-sdk sends its requests to all our devices (``*``); we address the verified ones only: an
answer from any other is refused anyway, and which sessions we lack is not their business.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import vodozemac

from e2eproxy.crypto.account import AccountState
from e2eproxy.crypto.changes import DeviceRecord, InboundGroupSessionRecord
from e2eproxy.crypto.decrypt import megolm_session_id
from e2eproxy.crypto.devices import DeviceTracker
from e2eproxy.crypto.key_requests import KEY_REQUEST
from e2eproxy.crypto.megolm_in import InboundSessions
from e2eproxy.crypto.requests import RequestQueue
from e2eproxy.crypto.results import RoomKeyInfo, SyncResult, ToDeviceFailure
from e2eproxy.crypto.settings import MEGOLM_ALGORITHM
from e2eproxy.crypto.to_device import ToDeviceEvent, ToDeviceRouter
from e2eproxy.crypto.trust import DeviceTrust, TrustState
from e2eproxy.protocol import api
from e2eproxy.types import DeviceId, RoomId, SessionId

logger = logging.getLogger(__name__)
FORWARDED_ROOM_KEY = "m.forwarded_room_key"
# The stable name and the MSC3061 one some clients still send.
SHARED_HISTORY = ("m.shared_history", "org.matrix.msc3061.shared_history")
MAX_PENDING = 1_000  # sessions asked for and not answered yet; the oldest is forgotten first
Key = tuple[RoomId, SessionId]


@dataclass(frozen=True, slots=True)
class PendingRequest:
    request_id: str
    devices: tuple[DeviceId, ...]  # the devices asked: they get the cancellation


class KeyRequester:
    """Room key requests to our own verified devices, and the forwarded keys they answer."""

    def __init__(self, account: AccountState, devices: DeviceTracker,
                 inbound: InboundSessions, queue: RequestQueue, trust: TrustState) -> None:
        self._account, self._devices, self._inbound = account, devices, inbound
        self._queue, self._trust = queue, trust
        self._pending: OrderedDict[Key, PendingRequest] = OrderedDict()

    def register(self, router: ToDeviceRouter) -> None:
        # Encrypted only: in the clear, anyone could hand us a key "from" our device.
        router.register(FORWARDED_ROOM_KEY, self._on_forwarded, plaintext=False)

    def pending(self, room_id: RoomId, session_id: SessionId) -> PendingRequest | None:
        return self._pending.get((room_id, session_id))

    # -- asking ---------------------------------------------------------------------------
    def request(self, room_id: RoomId, event: Any) -> bool:
        """Ask our verified devices for the key of the Megolm ``event``; True when a request
        was queued (False: not Megolm, held already, asked already, or nobody to ask)."""
        session_id = megolm_session_id(event)
        if session_id is None:
            return False
        key = (room_id, session_id)
        if key in self._pending or self._inbound.get(*key) is not None:
            return False
        devices = tuple(d.device_id for d in self._verified_own_devices())
        if not devices:
            return False
        body = {"algorithm": MEGOLM_ALGORITHM, "room_id": room_id, "session_id": session_id}
        sender_key = event["content"].get("sender_key")
        if isinstance(sender_key, str):  # deprecated, but still sent when known (as rust-sdk)
            body["sender_key"] = sender_key
        request_id = api.new_request_id()
        content = {"action": "request", "body": body, "request_id": request_id,
                   "requesting_device_id": self._account.device_id}
        self._send(dict.fromkeys(devices, content), request_id)
        self._pending[key] = PendingRequest(request_id, devices)
        if len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
        logger.debug("asked %d own devices for room key %s of %s", len(devices), session_id,
                     room_id)
        return True

    def _verified_own_devices(self) -> list[DeviceRecord]:
        return [d for d in self._devices.active_devices(self._account.user_id)
                if d.device_id != self._account.device_id
                and self._trust.device_trust(d) is DeviceTrust.VERIFIED]

    def _send(self, messages: dict[str, dict[str, Any]], request_id: str | None) -> None:
        # rust-sdk uses the request id as the transaction id too.
        self._queue.add(api.to_device(KEY_REQUEST, {self._account.user_id: messages},
                                      request_id))

    def _done(self, key: Key, answered_by: DeviceId) -> None:
        """The key is here: the other devices we asked need not answer any more (spec)."""
        pending = self._pending.pop(key)
        content = {"action": "request_cancellation", "request_id": pending.request_id,
                   "requesting_device_id": self._account.device_id}
        others: dict[str, dict[str, Any]] = {
            d: content for d in pending.devices if d != answered_by
        }
        if others:
            self._send(others, None)

    # -- answers --------------------------------------------------------------------------
    def _on_forwarded(self, event: ToDeviceEvent, result: SyncResult) -> None:
        reason = self._refusal(event)
        if reason is not None:
            logger.debug("forwarded room key from %s dropped: %s", event.sender.user_id, reason)
            result.failures.append(ToDeviceFailure(event.sender.user_id, event.type, reason))
            return
        assert event.sender.device is not None  # checked by _refusal
        record = _record_of(event.content)
        if record is None:
            logger.debug("forwarded room key from %s dropped: bad key", event.sender.user_id)
            result.failures.append(ToDeviceFailure(event.sender.user_id, event.type, "bad_key"))
            return
        key = (record.room_id, record.session_id)
        if not self._inbound.add(record):
            # As rust-sdk: the request stays pending (we hold a copy as good already).
            logger.debug("forwarded room key %s is no better than ours", record.session_id)
            return
        result.room_keys.append(RoomKeyInfo(*key, record.first_known_index))
        self._done(key, event.sender.device.device_id)
        logger.debug("room key %s of %s forwarded by our device %s", record.session_id,
                     record.room_id, event.sender.device.device_id)

    def _refusal(self, event: ToDeviceEvent) -> str | None:
        """Why a forwarded key must not be taken, or None."""
        content = event.content
        fields = ("room_id", "session_id", "session_key", "sender_key",
                  "sender_claimed_ed25519_key")
        if content.get("algorithm") != MEGOLM_ALGORITHM or not all(
            isinstance(content.get(name), str) for name in fields
        ):
            return "malformed"
        device = event.sender.device
        if event.sender.user_id != self._account.user_id:
            return "not_own_device"
        if device is None:  # not a device we know by both keys it sent with
            return "unknown_device"
        if self._trust.device_trust(device) is not DeviceTrust.VERIFIED:
            return "unverified_device"
        if (RoomId(content["room_id"]), SessionId(content["session_id"])) not in self._pending:
            return "not_requested"
        return None


def _record_of(content: dict[str, Any]) -> InboundGroupSessionRecord | None:
    """The imported session a forwarded key carries, if its key and claimed keys parse and the
    key is the session it names."""
    try:
        session = vodozemac.InboundGroupSession.import_session(
            vodozemac.ExportedSessionKey(content["session_key"])
        )
        vodozemac.Curve25519PublicKey.from_base64(content["sender_key"])
        vodozemac.Ed25519PublicKey.from_base64(content["sender_claimed_ed25519_key"])
    except (ValueError, TypeError):
        return None
    if session.session_id != content["session_id"]:
        return None
    shared = next((content[name] for name in SHARED_HISTORY if name in content), False)
    return InboundGroupSessionRecord(
        RoomId(content["room_id"]), SessionId(content["session_id"]), content["sender_key"],
        content["sender_claimed_ed25519_key"], session, imported=True,
        shared_history=shared is True, first_known_index=session.first_known_index,
    )
