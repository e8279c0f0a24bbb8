"""``m.room_key.withheld`` notices: a sender telling us why it did not give us a room key.

The spec sends them as plain to-device events (an ``m.no_olm`` notice cannot be encrypted), so
the server's ``sender`` is all a plain one proves. A notice is kept only when its ``sender_key``
is one of that sender's own known devices (and, when it came over Olm, the key it came with),
and it explains a missing key only for an event of that same sender (and, when the event names
its ``sender_key``, of that same device): a room member cannot mark another sender's messages as
withheld with a notice of its own. At most ``MAX_NOTICES`` are kept, the oldest forgotten first
(in the store too): anyone we share a room with can send any number of them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from e2eproxy.crypto.changes import ChangeLog, WithheldRecord
from e2eproxy.crypto.devices import DeviceTracker
from e2eproxy.crypto.megolm_in import InboundSessions
from e2eproxy.crypto.results import SyncResult
from e2eproxy.crypto.settings import MEGOLM_ALGORITHM
from e2eproxy.crypto.to_device import ToDeviceEvent, ToDeviceRouter
from e2eproxy.types import RoomId, SessionId

logger = logging.getLogger(__name__)

# The stable name and the one clients used before it (still sent by some).
WITHHELD_EVENTS = ("m.room_key.withheld", "org.matrix.room_key.withheld")
MAX_NOTICES = 10_000
# Room ids are at most 255 bytes, session ids 43 characters, and a code an ``m.`` name or a
# Java-package-style custom one: a longer field is not one of them.
MAX_FIELD_LENGTH = 255
MAX_REASON_LENGTH = 500

Key = tuple[RoomId, SessionId]


class WithheldNotices:
    """The withheld notices we accepted, oldest first, at most ``limit``."""

    def __init__(self, devices: DeviceTracker, inbound: InboundSessions, log: ChangeLog,
                 limit: int | None = None) -> None:
        self._devices = devices
        self._inbound = inbound
        self._log = log
        self._limit = MAX_NOTICES if limit is None else limit
        self._notices: OrderedDict[Key, WithheldRecord] = OrderedDict()

    def register(self, router: ToDeviceRouter) -> None:
        router.register(WITHHELD_EVENTS, self._receive)

    def load(self, records: Iterable[WithheldRecord]) -> None:
        for record in records:
            self._notices[(record.room_id, record.session_id)] = record
        self._trim()  # a store written before the bound may hold more

    def __len__(self) -> int:
        return len(self._notices)

    def discard(self, room_id: RoomId, session_id: SessionId) -> None:
        """The key arrived after all: the notice is moot."""
        if self._notices.pop((room_id, session_id), None) is not None:
            self._log.withheld_removed(room_id, session_id)

    def code_for(self, room_id: RoomId, session_id: SessionId, event: dict[str, Any]
                 ) -> str | None:
        """The withheld code that explains why ``event`` (a Megolm event whose session we lack)
        cannot be read: only a notice from the device that sent it counts."""
        notice = self._notices.get((room_id, session_id))
        if notice is None:
            return None
        content = event.get("content")
        named_key = content.get("sender_key") if isinstance(content, dict) else None
        if isinstance(named_key, str) and named_key != notice.sender_key:
            return None
        device = self._devices.by_curve25519(notice.sender_key)
        if device is None or device.user_id != event.get("sender"):
            return None
        return notice.code

    def _receive(self, event: ToDeviceEvent, result: SyncResult) -> None:
        content, sender = event.content, event.sender
        if content.get("algorithm") != MEGOLM_ALGORITHM:
            return
        room_id, session_id = content.get("room_id"), content.get("session_id")
        code, sender_key = content.get("code"), content.get("sender_key")
        if not (
            isinstance(room_id, str) and room_id.startswith("!") and isinstance(session_id, str)
            and isinstance(code, str) and isinstance(sender_key, str)
        ):
            return  # m.no_olm carries no session: nothing to remember per session
        if max(len(code), len(room_id), len(session_id)) > MAX_FIELD_LENGTH:
            logger.debug("withheld notice from %s with an oversized field: ignored",
                         sender.user_id)
            return
        if sender.curve25519 is not None and sender.curve25519 != sender_key:
            logger.debug("withheld notice from %s over Olm names another key: ignored",
                         sender.user_id)
            return
        key = (RoomId(room_id), SessionId(session_id))
        if self._inbound.get(*key) is not None:
            return
        # Anyone can send a plaintext notice naming any session: only the sender's own device
        # (its Curve25519 key as we know it) may say it withheld a session it created.
        device = self._devices.by_curve25519(sender_key)
        if device is None or device.user_id != sender.user_id:
            logger.debug("withheld notice from %s for a key not of its devices: ignored",
                         sender.user_id)
            return
        reason = content.get("reason")
        record = WithheldRecord(key[0], key[1], sender_key, code,
                                reason[:MAX_REASON_LENGTH] if isinstance(reason, str) else "")
        self._notices[key] = record
        self._notices.move_to_end(key)
        self._log.withheld(record)
        self._trim()
        result.withheld.append((key[0], key[1], code))

    def _trim(self) -> None:
        while len(self._notices) > self._limit:
            (room_id, session_id), _ = self._notices.popitem(last=False)
            self._log.withheld_removed(room_id, session_id)
