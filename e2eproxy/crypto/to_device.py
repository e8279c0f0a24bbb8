"""The to-device router: every to-device event, plain or Olm-decrypted, goes to the handler
registered for its type, with who sent it as far as we can tell.

A plaintext event's sender is only the server's word (`sender`); a decrypted one also carries the
Curve25519 key of the Olm session it came over and the Ed25519 key its payload claimed and we
checked, and the device record those keys belong to when we know it. A handler decides from
that whether it may act (room keys from anyone with an Olm session; secrets only from our own
verified devices, ...). Types nobody registered are logged at debug and dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from e2eproxy.crypto.changes import DeviceRecord
from e2eproxy.crypto.results import SyncResult, ToDeviceFailure

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ToDeviceSender:
    """Who sent a to-device event. For a plaintext event only ``user_id`` is set."""

    user_id: str
    curve25519: str | None = None
    ed25519: str | None = None
    # The known device whose keys these are (same user, same Ed25519 key), if any.
    device: DeviceRecord | None = None

    @property
    def verified_keys(self) -> bool:
        """The event came over Olm from a device we know by both its keys."""
        return self.device is not None


@dataclass(frozen=True, slots=True)
class ToDeviceEvent:
    type: str
    content: dict[str, Any]
    sender: ToDeviceSender
    encrypted: bool


Handler = Callable[[ToDeviceEvent, SyncResult], None]


@dataclass(frozen=True, slots=True)
class _Route:
    handler: Handler
    plaintext: bool  # False: the type only counts when it came Olm-encrypted


class ToDeviceRouter:
    """Handlers by event type; one ``dispatch`` per event."""

    def __init__(self) -> None:
        self._routes: dict[str, _Route] = {}

    def register(self, event_types: str | tuple[str, ...], handler: Handler, *,
                 plaintext: bool = True) -> None:
        """Route ``event_types`` to ``handler``; ``plaintext=False`` refuses unencrypted ones
        (a room key in the clear could come from anyone)."""
        for event_type in (event_types,) if isinstance(event_types, str) else event_types:
            if event_type in self._routes:
                raise ValueError(f"a handler is already registered for {event_type}")
            self._routes[event_type] = _Route(handler, plaintext)

    def handles(self, event_type: str) -> bool:
        return event_type in self._routes

    def dispatch(self, event: ToDeviceEvent, result: SyncResult) -> None:
        route = self._routes.get(event.type)
        if route is None:
            logger.debug("to-device %s from %s: no handler, dropped", event.type,
                         event.sender.user_id)
            return
        if not event.encrypted and not route.plaintext:
            result.failures.append(
                ToDeviceFailure(event.sender.user_id, event.type, "must_be_encrypted")
            )
            return
        route.handler(event, result)
