"""``/keys/claim``: Olm sessions for devices that lack one, and MSC1719 unwedging."""

from __future__ import annotations

from typing import Any

from e2eproxy.crypto.backoff import FailuresCache
from e2eproxy.crypto.changes import ChangeLog, DeviceRecord
from e2eproxy.crypto.clock import Clock
from e2eproxy.crypto.devices import DeviceTracker, server_of
from e2eproxy.crypto.olm import OlmSessions
from e2eproxy.protocol import api
from e2eproxy.protocol.api import OutgoingRequest
from e2eproxy.types import DeviceId, UserId

UNWEDGE_INTERVAL_MS = 3_600_000
DeviceKey = tuple[UserId, DeviceId]


class OlmClaimer:
    """Builds claim requests, turns answers into sessions, remembers failing devices."""

    def __init__(self, devices: DeviceTracker, olm: OlmSessions, clock: Clock,
                 log: ChangeLog) -> None:
        self._devices = devices
        self._olm = olm
        self._clock = clock
        self._log = log
        self.failures = FailuresCache()
        self._in_flight: dict[str, list[DeviceKey]] = {}
        self.wedged: set[DeviceKey] = set()

    def is_claiming(self, key: DeviceKey) -> bool:
        return any(key in batch for batch in self._in_flight.values())

    def can_claim(self, device: DeviceRecord, *, sharing: bool = False) -> bool:
        """Not being claimed, and not backed off. ``sharing``: for a room key share, which
        asks again after a failed claim request (see ``DeviceTracker.request_failures``)."""
        key = (device.user_id, device.device_id)
        now = self._clock.now_ms()
        server = server_of(key[0])
        return not (
            self.is_claiming(key)
            or self.failures.is_failing(f"{key[0]}|{key[1]}", now)
            or self._devices.server_failures.is_failing(server, now)
            or (not sharing and self._devices.request_failures.is_failing(server, now))
        )

    def claim_request(self, devices: list[DeviceRecord], *, sharing: bool = False
                      ) -> OutgoingRequest | None:
        wanted: dict[str, list[str]] = {}
        keys: list[DeviceKey] = []
        for device in devices:
            if self.can_claim(device, sharing=sharing):
                wanted.setdefault(device.user_id, []).append(device.device_id)
                keys.append((device.user_id, device.device_id))
        if not keys:
            return None
        request = api.keys_claim(wanted)
        self._in_flight[request.id] = keys
        return request

    def mark_wedged(self, sender: str, sender_key: str) -> None:
        """A message from this key could not be decrypted: recover, at most hourly. The key is
        unauthenticated: only a device of the to-device sender itself is ever unwedged, so no one
        can make us drain another user's one-time keys."""
        device = self._devices.by_curve25519(sender_key)
        if device is None or device.user_id != sender:
            return
        now = self._clock.now_ms()
        last = device.last_unwedge_ms
        if last is not None and now - last < UNWEDGE_INTERVAL_MS:
            return
        device.last_unwedge_ms = now
        self._log.device(device)
        self.wedged.add((device.user_id, device.device_id))

    def wedged_to_claim(self) -> list[DeviceRecord]:
        found = []
        for user, device_id in self.wedged:
            device = self._devices.get(user, device_id)
            if device is not None and not device.deleted:
                found.append(device)
        return found

    def receive(self, request_id: str, response: Any) -> list[DeviceRecord]:
        """Create sessions from a claim answer; returns the devices that got a new one."""
        batch = self._in_flight.pop(request_id, [])
        created: list[DeviceRecord] = []
        now = self._clock.now_ms()
        body = response if isinstance(response, dict) else {}
        answered = body.get("one_time_keys")
        answered = answered if isinstance(answered, dict) else {}
        failures = body.get("failures")
        failed_servers = set(failures) if isinstance(failures, dict) else set()
        for server in failed_servers:
            self._devices.server_failures.failed(server, now)
        for server in {server_of(user) for user, _device in batch} - failed_servers:
            self._devices.request_failures.succeeded(server)
        for user, device_id in batch:
            device = self._devices.get(user, device_id)
            if device is None or server_of(user) in failed_servers:
                continue
            user_keys = answered.get(user)
            claimed = user_keys.get(device_id) if isinstance(user_keys, dict) else None
            if self._olm.create_outbound(device, claimed):
                self.failures.succeeded(f"{user}|{device_id}")
                created.append(device)
            else:
                self.failures.failed(f"{user}|{device_id}", now)
        return created

    def failed(self, request_id: str) -> None:
        now = self._clock.now_ms()
        # Once per server: a batch of many devices is one failure, not one per device. The
        # request failed, not those servers: a share claims again (request_failures).
        for server in {server_of(user) for user, _device in self._in_flight.pop(request_id, [])}:
            self._devices.request_failures.failed(server, now)
