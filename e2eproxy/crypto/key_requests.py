"""Answering ``m.room_key_request`` with ``m.forwarded_room_key``, as matrix-rust-sdk does.

Another user's device gets a room key again only if our current outbound session in that room
was shared with it, and only from the message index it was shared at, so a request can never
reach messages the device was not meant to read. One of our own devices that we verified gets
any session we hold, from the first index we hold (its requests: ``key_requester``); an
unverified own device gets nothing. Requests for anything else are ignored.

The engine holds only some inbound sessions in memory: a session an own device asks for that is
not there is listed in ``SyncResult.sessions_to_load``; the shell loads it in the same step, and
the answer goes out when it arrives (``answer_waiting``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from e2eproxy.crypto.account import AccountState
from e2eproxy.crypto.changes import DeviceRecord, InboundGroupSessionRecord
from e2eproxy.crypto.claims import OlmClaimer
from e2eproxy.crypto.devices import DeviceTracker
from e2eproxy.crypto.megolm_in import InboundSessions
from e2eproxy.crypto.megolm_out import OutboundSessions
from e2eproxy.crypto.olm import OlmSessions
from e2eproxy.crypto.requests import RequestQueue
from e2eproxy.crypto.results import SyncResult
from e2eproxy.crypto.settings import MEGOLM_ALGORITHM, LocalTrust
from e2eproxy.crypto.to_device import ToDeviceEvent, ToDeviceRouter
from e2eproxy.crypto.trust import DeviceTrust, TrustState
from e2eproxy.protocol import api
from e2eproxy.types import DeviceId, RoomId, SessionId, UserId

logger = logging.getLogger(__name__)
KEY_REQUEST = "m.room_key_request"
# Answers remembered, so a device cannot make us encrypt and send the same key again and again:
# another user's by session whatever the request id, our own devices' by request id.
MAX_ANSWERED = 1_000
MAX_WAITING = 256  # own devices' requests waiting for a session from the store or an Olm session
Key = tuple[RoomId, SessionId]
OwnRequest = tuple[DeviceId, str]  # (requesting device, request id)


class KeyRequestResponder:
    """Turns key requests from sync bodies into Olm-encrypted ``m.forwarded_room_key`` answers."""

    def __init__(self, account: AccountState, devices: DeviceTracker, olm: OlmSessions,
                 outbound: OutboundSessions, inbound: InboundSessions,
                 queue: RequestQueue) -> None:
        self._account = account
        self._devices = devices
        self._olm = olm
        self._outbound = outbound
        self._inbound = inbound
        self._queue = queue
        self._answered: OrderedDict[tuple[str, str, str, str], None] = OrderedDict()
        self.trust: TrustState | None = None  # set by the machine; None: no own device answered
        self.claimer: OlmClaimer | None = None
        self._waiting: OrderedDict[Key, list[OwnRequest]] = OrderedDict()  # for the store
        self._no_olm: OrderedDict[OwnRequest, Key] = OrderedDict()  # for an Olm session

    def register(self, router: ToDeviceRouter) -> None:
        # Plaintext requests count too: they only ever get an answer over Olm, to a device
        # the key was shared with or to a verified device of ours.
        router.register(KEY_REQUEST, self.handle)

    def handle(self, event: ToDeviceEvent, result: SyncResult) -> None:
        self._answer(event.sender.user_id, event.content, result)

    def _answer(self, sender: str, content: dict[str, Any], result: SyncResult) -> None:
        body, device_id = content.get("body"), content.get("requesting_device_id")
        request_id = content.get("request_id")
        if sender == self._account.user_id and content.get("action") == "request_cancellation":
            if isinstance(device_id, str) and isinstance(request_id, str):
                self._cancel(DeviceId(device_id), request_id)
            return  # another user's answers go out at once: nothing of theirs is pending
        if content.get("action") != "request" or not isinstance(body, dict):
            return
        room_id, session_id = body.get("room_id"), body.get("session_id")
        if (
            body.get("algorithm") != MEGOLM_ALGORITHM
            or not isinstance(room_id, str)
            or not isinstance(session_id, str)
            or not isinstance(device_id, str)
        ):
            return
        if sender == self._account.user_id:
            if isinstance(request_id, str) and device_id != self._account.device_id:
                self._answer_own(DeviceId(device_id), request_id,
                                 (RoomId(room_id), SessionId(session_id)), result)
            return
        if (sender, device_id, session_id, "") in self._answered:
            return
        record = self._outbound.get(RoomId(room_id))
        if record is None or record.session.session_id != session_id:
            return
        index = record.shared_with.get(UserId(sender), {}).get(DeviceId(device_id))
        device = self._devices.get(sender, device_id)
        if index is None or device is None or device.deleted:
            return
        if device.local_trust is LocalTrust.BLACKLISTED:
            return
        own_copy = self._inbound.get(RoomId(room_id), SessionId(session_id))
        if own_copy is None or not self._forward(device, own_copy, index):
            return  # no Olm session: it never had the key from us over Olm either
        self._remember((sender, device_id, session_id, ""))
        logger.debug("re-shared room key %s of %s with %s/%s from index %d",
                     session_id, room_id, sender, device_id, index)

    def _forward(self, device: DeviceRecord, record: InboundGroupSessionRecord,
                 index: int) -> bool | None:
        """Queue ``record`` from ``index`` to ``device`` over Olm: True when sent, False
        without an Olm session, None when we do not hold the session from that index."""
        exported = record.session.export_at(index)
        if exported is None:
            return None
        forwarded = {
            "algorithm": MEGOLM_ALGORITHM,
            "room_id": record.room_id,
            "sender_key": record.sender_key,
            "session_id": record.session_id,
            "session_key": exported.to_base64(),
            "sender_claimed_ed25519_key": record.signing_key,
            "forwarding_curve25519_key_chain": [],
            "m.shared_history": record.shared_history,
        }
        encrypted = self._olm.encrypt(device, "m.forwarded_room_key", forwarded)
        if encrypted is None:
            return False
        messages: dict[str, dict[str, Any]] = {device.user_id: {device.device_id: encrypted}}
        self._queue.add(api.to_device("m.room.encrypted", messages))
        return True

    def _remember(self, key: tuple[str, str, str, str]) -> None:
        self._answered[key] = None
        if len(self._answered) > MAX_ANSWERED:
            self._answered.popitem(last=False)

    # -- our own devices ------------------------------------------------------------------
    def _own_verified(self, device_id: DeviceId) -> DeviceRecord | None:
        device = self._devices.get(self._account.user_id, device_id)
        if device is None or device.deleted or self.trust is None:
            return None
        return device if self.trust.device_trust(device) is DeviceTrust.VERIFIED else None

    def _answer_own(self, device_id: DeviceId, request_id: str, key: Key,
                    result: SyncResult) -> None:
        if (self._account.user_id, device_id, key[1], request_id) in self._answered:
            return
        if self._own_verified(device_id) is None:
            logger.debug("a room key request from our unverified device %s was ignored",
                         device_id)
            return
        if self._inbound.get(*key) is None:  # maybe in the store: asked for, answered later
            asks = self._waiting.setdefault(key, [])
            if (device_id, request_id) not in asks:
                asks.append((device_id, request_id))
            _bound(self._waiting)
            if key not in result.sessions_to_load:
                result.sessions_to_load.append(key)
            return
        self._send_own(device_id, request_id, key)

    def _send_own(self, device_id: DeviceId, request_id: str, key: Key) -> None:
        device, record = self._own_verified(device_id), self._inbound.get(*key)
        if device is None or record is None:
            return
        sent = self._forward(device, record, record.first_known_index)
        if sent is None:
            return
        if not sent:
            self._no_olm[(device_id, request_id)] = key  # claim one, answer once it exists
            _bound(self._no_olm)
            claim = self.claimer.claim_request([device]) if self.claimer is not None else None
            if claim is not None:
                self._queue.add(claim)
            return
        self._remember((self._account.user_id, device_id, key[1], request_id))
        logger.debug("forwarded room key %s of %s to our device %s", key[1], key[0], device_id)

    def answer_waiting(self) -> None:
        """The store's sessions were loaded: answer the requests that waited for them; the
        others name sessions we do not have."""
        waiting, self._waiting = self._waiting, OrderedDict()
        for key, asks in waiting.items():
            for device_id, request_id in asks:
                self._send_own(device_id, request_id, key)

    def new_session(self, device: DeviceRecord) -> None:
        """An Olm session with ``device`` now exists: send the answers that waited for it."""
        if device.user_id != self._account.user_id:
            return
        for ask in [a for a in self._no_olm if a[0] == device.device_id]:
            self._send_own(*ask, self._no_olm.pop(ask))

    def _cancel(self, device_id: DeviceId, request_id: str) -> None:
        self._no_olm.pop((device_id, request_id), None)
        for asks in self._waiting.values():
            asks[:] = [a for a in asks if a != (device_id, request_id)]


def _bound(items: OrderedDict[Any, Any]) -> None:
    while len(items) > MAX_WAITING:
        items.popitem(last=False)
