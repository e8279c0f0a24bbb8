"""Answering ``m.room_key_request``: re-sharing our current room key with a device that had it.

The policy is matrix-rust-sdk's for other users' devices: a device gets a room key again only if
our current outbound session in that room was shared with it, and only from the message index it
was shared at, so a request can never reach messages the device was not meant to read. Requests
for anything else (an older session, a session of another sender, a device we never shared with)
are ignored. Our own other devices get keys through the store, not through requests (see the
proxy's ``decrypt_io``), and unverified own devices must not get them this way.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from e2eproxy.crypto.account import AccountState
from e2eproxy.crypto.devices import DeviceTracker
from e2eproxy.crypto.megolm_in import InboundSessions
from e2eproxy.crypto.megolm_out import OutboundSessions
from e2eproxy.crypto.olm import OlmSessions
from e2eproxy.crypto.requests import RequestQueue
from e2eproxy.crypto.results import SyncResult
from e2eproxy.crypto.settings import MEGOLM_ALGORITHM, LocalTrust
from e2eproxy.crypto.to_device import ToDeviceEvent, ToDeviceRouter
from e2eproxy.protocol import api
from e2eproxy.types import DeviceId, RoomId, SessionId, UserId

logger = logging.getLogger(__name__)
KEY_REQUEST = "m.room_key_request"
# Answered (user, device, session) triples remembered, so a device cannot make us encrypt and
# send the same key again and again with fresh request ids.
MAX_ANSWERED = 1_000


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
        self._answered: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    def register(self, router: ToDeviceRouter) -> None:
        # Plaintext requests count too: they only ever get an answer over Olm, to a device
        # the key was shared with.
        router.register(KEY_REQUEST, self.handle)

    def handle(self, event: ToDeviceEvent, result: SyncResult) -> None:
        self._answer(event.sender.user_id, event.content)

    def _answer(self, sender: str, content: dict[str, Any]) -> None:
        body, device_id = content.get("body"), content.get("requesting_device_id")
        if content.get("action") != "request" or not isinstance(body, dict):
            return  # cancellations: every answer goes out at once, nothing is pending
        room_id, session_id = body.get("room_id"), body.get("session_id")
        if (
            body.get("algorithm") != MEGOLM_ALGORITHM
            or not isinstance(room_id, str)
            or not isinstance(session_id, str)
            or not isinstance(device_id, str)
        ):
            return
        if sender == self._account.user_id or (sender, device_id, session_id) in self._answered:
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
        exported = own_copy.session.export_at(index) if own_copy is not None else None
        if exported is None:
            return
        forwarded = {
            "algorithm": MEGOLM_ALGORITHM,
            "room_id": room_id,
            "sender_key": self._account.curve25519,
            "session_id": session_id,
            "session_key": exported.to_base64(),
            "sender_claimed_ed25519_key": self._account.ed25519,
            "forwarding_curve25519_key_chain": [],
            "m.shared_history": record.settings.shared_history,
        }
        encrypted = self._olm.encrypt(device, "m.forwarded_room_key", forwarded)
        if encrypted is None:
            return  # no Olm session: it never had the key from us over Olm either
        self._queue.add(api.to_device("m.room.encrypted", {sender: {device_id: encrypted}}))
        self._answered[(sender, device_id, session_id)] = None
        if len(self._answered) > MAX_ANSWERED:
            self._answered.popitem(last=False)
        logger.debug("re-shared room key %s of %s with %s/%s from index %d",
                     session_id, room_id, sender, device_id, index)
