"""Device tracking: tracked users, dirty flags with sequence numbers, ``/keys/query`` answers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from e2eproxy.crypto.backoff import FailuresCache
from e2eproxy.crypto.changes import ChangeLog, DeviceRecord, TrackedUserRecord
from e2eproxy.crypto.settings import LocalTrust
from e2eproxy.protocol.canonical import verify_json
from e2eproxy.types import DeviceId, UserId

logger = logging.getLogger(__name__)


def server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


def device_ed25519(record: DeviceRecord) -> str:
    return str(record.keys.get("keys", {}).get(f"ed25519:{record.device_id}", ""))


def device_curve25519(record: DeviceRecord) -> str:
    return str(record.keys.get("keys", {}).get(f"curve25519:{record.device_id}", ""))


@dataclass(slots=True)
class DeviceUpdate:
    """What one ``/keys/query`` answer changed."""

    new: list[DeviceRecord] = field(default_factory=list)
    removed: list[DeviceRecord] = field(default_factory=list)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)
    # The users whose lists this answer applied (their cross-signing keys apply too).
    users: list[str] = field(default_factory=list)


class DeviceTracker:
    """Known devices and the users whose device lists we follow."""

    def __init__(self, own_user: UserId, own_device: DeviceId, own_ed25519: str,
                 log: ChangeLog) -> None:
        self._own_user = own_user
        self._own_device = own_device
        self._own_ed25519 = own_ed25519
        self._log = log
        self.users: dict[UserId, TrackedUserRecord] = {}
        self.devices: dict[UserId, dict[DeviceId, DeviceRecord]] = {}
        self._by_curve: dict[str, DeviceRecord] = {}
        self._seq = 0
        self._in_flight: dict[str, dict[UserId, int]] = {}
        # Queries are numbered as they are sent; an answer older than one already applied for a
        # user is stale (two queries for one user can be in flight and answer out of order).
        self._query_order = 0
        self._sent_order: dict[str, int] = {}
        self._applied_order: dict[UserId, int] = {}
        self.queried: set[UserId] = set()
        # Servers the homeserver named in an answer's `failures` (federation): backed off
        # everywhere, a share included, so one dead server does not stop every send.
        self.server_failures = FailuresCache()
        # Servers whose users' query failed as a whole (our homeserver's error, a timeout):
        # only the background's queries back off; a share asks again, and fails if it fails,
        # rather than share with devices it never learnt (matrix-rust-sdk does the same).
        self.request_failures = FailuresCache()

    # -- loading -------------------------------------------------------------------------
    def load(self, users: list[TrackedUserRecord], devices: list[DeviceRecord]) -> None:
        for user in users:
            if user.tracked:
                self.users[user.user_id] = user
                self._seq = max(self._seq, user.seq)
        for device in devices:
            self._put(device)
            self.queried.add(device.user_id)

    def _put(self, device: DeviceRecord) -> None:
        previous = self.devices.get(device.user_id, {}).get(device.device_id)
        if previous is not None:  # its old Curve25519 key is free again
            self._by_curve.pop(device_curve25519(previous), None)
        self.devices.setdefault(device.user_id, {})[device.device_id] = device
        curve = device_curve25519(device)
        if curve and not device.deleted:
            self._by_curve[curve] = device

    # -- lookups -------------------------------------------------------------------------
    def get(self, user_id: str, device_id: str) -> DeviceRecord | None:
        return self.devices.get(UserId(user_id), {}).get(DeviceId(device_id))

    def by_curve25519(self, key: str) -> DeviceRecord | None:
        device = self._by_curve.get(key)
        return None if device is None or device.deleted else device

    def active_devices(self, user_id: UserId) -> list[DeviceRecord]:
        return [d for d in self.devices.get(user_id, {}).values() if not d.deleted]

    # -- tracking ------------------------------------------------------------------------
    def track(self, users: list[UserId]) -> None:
        """Start following these users (a no-op for users already tracked)."""
        for user in users:
            if user not in self.users:
                self._seq += 1
                record = TrackedUserRecord(user, tracked=True, dirty=True, seq=self._seq)
                self.users[user] = record
                self._log.tracked_user(record)

    def mark_changed(self, users: list[UserId]) -> None:
        """``device_lists.changed``: tracked users need a new query."""
        for user in users:
            record = self.users.get(user)
            if record is not None:
                self._seq += 1
                record.dirty = True
                record.seq = self._seq
                self._log.tracked_user(record)

    def untrack(self, users: list[UserId]) -> None:
        """``device_lists.left``: we share no encrypted room with them any more."""
        for user in users:
            if user == self._own_user:
                continue
            self._applied_order.pop(user, None)
            record = self.users.pop(user, None)
            if record is not None:
                record.tracked = False
                self._log.tracked_user(record)

    def users_to_query(self, now_ms: int) -> list[UserId]:
        busy = {u for batch in self._in_flight.values() for u in batch}
        return [
            user
            for user, record in self.users.items()
            if record.dirty and user not in busy
            and not self.server_failures.is_failing(server_of(user), now_ms)
            and not self.request_failures.is_failing(server_of(user), now_ms)
        ]

    def query_sent(self, request_id: str, users: list[UserId]) -> None:
        self._in_flight[request_id] = {u: self.users[u].seq for u in users if u in self.users}
        self._query_order += 1
        self._sent_order[request_id] = self._query_order

    def is_outdated(self, user: UserId) -> bool:
        """Never queried, or a device list change arrived since the last answer."""
        record = self.users.get(user)
        return user not in self.queried or (record is not None and record.dirty)

    def query_failed(self, request_id: str, now_ms: int) -> None:
        batch = self._in_flight.pop(request_id, {})
        self._sent_order.pop(request_id, None)
        for server in {server_of(u) for u in batch}:
            self.request_failures.failed(server, now_ms)

    # -- answers -------------------------------------------------------------------------
    def receive_query(self, request_id: str, response: Any, now_ms: int) -> DeviceUpdate:
        """Apply a ``/keys/query`` answer; never raises on malformed data."""
        batch = self._in_flight.pop(request_id, {})
        order = self._sent_order.pop(request_id, 0)
        update = DeviceUpdate()
        if not isinstance(response, dict):
            return update
        failures = response.get("failures")
        failed_servers = set(failures) if isinstance(failures, dict) else set()
        for server in failed_servers:
            self.server_failures.failed(server, now_ms)
        answered = response.get("device_keys")
        answered = answered if isinstance(answered, dict) else {}
        for user, seq in batch.items():
            if server_of(user) in failed_servers or user not in answered:
                continue
            self.server_failures.succeeded(server_of(user))
            self.request_failures.succeeded(server_of(user))
            if order < self._applied_order.get(user, 0):
                logger.debug("ignoring an older /keys/query answer for %s", user)
                continue  # a later query's answer is already applied: this one is older news
            self._applied_order[user] = order
            devices = answered[user]
            self._apply_user(user, devices if isinstance(devices, dict) else {}, update)
            update.users.append(user)
            active = sorted(d.device_id for d in self.active_devices(user))
            logger.debug("devices of %s: %s", user, active)
            self.queried.add(user)
            record = self.users.get(user)
            if record is not None and record.seq == seq and record.dirty:
                record.dirty = False
                self._log.tracked_user(record)
        return update

    def _apply_user(self, user: UserId, devices: dict[str, Any], update: DeviceUpdate) -> None:
        seen: set[str] = set()
        for device_id, keys in devices.items():
            reason = self._validate(user, device_id, keys)
            if reason is not None:
                update.rejected.append((user, device_id, reason))
                if reason == "signing_key_changed":
                    seen.add(device_id)
                continue
            seen.add(device_id)
            existing = self.get(user, device_id)
            if existing is not None and not existing.deleted and existing.keys == keys:
                continue
            trust = existing.local_trust if existing is not None else LocalTrust.UNSET
            if user == self._own_user and device_id == self._own_device:
                trust = LocalTrust.VERIFIED
            record = DeviceRecord(UserId(user), DeviceId(device_id), keys, trust, deleted=False)
            if existing is not None:
                record.no_olm_sent = existing.no_olm_sent
                record.last_unwedge_ms = existing.last_unwedge_ms
            if existing is None or existing.deleted:
                update.new.append(record)
            self._put(record)
            self._log.device(record)
        for device_id, device in self.devices.get(user, {}).items():
            if device_id not in seen and not device.deleted:
                device.deleted = True
                self._by_curve.pop(device_curve25519(device), None)
                update.removed.append(device)
                self._log.device(device)

    def _validate(self, user: str, device_id: str, keys: Any) -> str | None:
        if not isinstance(keys, dict) or not isinstance(keys.get("keys"), dict):
            return "malformed"
        if keys.get("user_id") != user or keys.get("device_id") != device_id:
            return "id_mismatch"
        ed25519 = keys["keys"].get(f"ed25519:{device_id}")
        curve = keys["keys"].get(f"curve25519:{device_id}")
        if not isinstance(ed25519, str) or not isinstance(curve, str):
            return "missing_keys"
        if not verify_json(keys, user, f"ed25519:{device_id}", ed25519):
            return "bad_signature"
        existing = self.get(user, device_id)
        if existing is not None and device_ed25519(existing) != ed25519:
            return "signing_key_changed"
        owner = self._by_curve.get(curve)
        if owner is not None and (owner.user_id, owner.device_id) != (user, device_id):
            return "curve25519_key_taken"  # first come: a copy would hijack its messages
        if user == self._own_user and device_id == self._own_device and (
            ed25519 != self._own_ed25519
        ):
            return "signing_key_changed"
        return None

    def save(self, device: DeviceRecord) -> None:
        """Log a device whose metadata changed outside this module."""
        self._log.device(device)

    def set_local_trust(self, user: UserId, device: DeviceId, trust: LocalTrust) -> bool:
        record = self.get(user, device)
        if record is None:
            return False
        record.local_trust = trust
        self._log.device(record)
        return True
