"""The proxy's Prometheus metrics, counted where things happen and served on the metrics
listener (monitoring/listener.py).

One ``Metrics`` holds its own ``CollectorRegistry``, never the library's global one: a process
has one (shared by its listeners, told apart by the ``server`` label), and so has every app a
test starts, so several proxies in one process never collide.

Labels are bounded and name nobody: a route is its pattern (never the path, which holds room
and user IDs), a to-device type is one of the known ones or "other", a cause
is one of the engine's failure reasons; no user, room, device or token ever becomes a label.
Counting a request (requests.py) is one dict update: it is on the pass-through path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.process_collector import ProcessCollector

from e2eproxy.crypto.results import Decrypted, DecryptionFailure, FailureReason
from e2eproxy.monitoring.accounts import AccountsCollector
from e2eproxy.monitoring.requests import OTHER, RequestCounter
from e2eproxy.protocol.api import OutgoingRequest, RequestKind

# The to-device types a label may name; any other is "other" (a peer may send any type).
TO_DEVICE_TYPES = frozenset({
    "m.room.encrypted", "m.room_key", "m.forwarded_room_key", "m.room_key_request",
    "m.room_key.withheld", "org.matrix.room_key.withheld", "m.dummy",
    "m.secret.request", "m.secret.send",
    *(f"m.key.verification.{step}" for step in (
        "request", "ready", "start", "accept", "key", "mac", "done", "cancel",
    )),
})
# Why a room event stayed encrypted: the engine's reasons, and "withheld" for a missing key
# its sender said it will not send (m.room_key.withheld).
WITHHELD = "withheld"
FAILURE_CAUSES = (*(reason.value for reason in FailureReason), WITHHELD)
# Seconds: SQLite commits with fsync in about a millisecond, PostgreSQL over a network in a few.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                  float("inf"))

Result = Decrypted | DecryptionFailure


def to_device_label(event_type: str) -> str:
    return event_type if event_type in TO_DEVICE_TYPES else OTHER


def backend_label(store: object) -> str:
    """"sqlite", "postgres" or "memory" for the store classes; bounded by the classes."""
    return type(store).__name__.removesuffix("Store").lower() or OTHER


def message_count(request: OutgoingRequest) -> int:
    """How many devices a to-device request addresses."""
    messages = request.body.get("messages")
    if not isinstance(messages, dict):
        return 0
    return sum(len(devices) for devices in messages.values() if isinstance(devices, dict))


def to_device_type(request: OutgoingRequest) -> str:
    """The event type in a ``PUT /sendToDevice/{type}/{txn}`` path."""
    return unquote(request.path.rsplit("/", 2)[-2])


class Metrics:
    """Every metric of the proxy, in a registry of its own (``registry``)."""

    def __init__(self, *, process: bool = False) -> None:
        """``process``: also the process's CPU, memory and open files (one per process)."""
        self.registry = registry = CollectorRegistry()
        self.requests = RequestCounter()
        registry.register(self.requests)
        # Bound once: counting a request is on the pass-through path.
        self.count_request: Callable[[web.Request, int], None] = self.requests.count
        self._decrypted = Counter(
            "e2eproxy_decrypted_events", "Room events decrypted for clients", registry=registry)
        self._failures = Counter(
            "e2eproxy_decryption_failures", "Room events that could not be decrypted, by cause",
            ("cause",), registry=registry)
        self._shares = Counter(
            "e2eproxy_room_key_shares", "Room key shares that sent a room key to at least one "
            "device (a new session, or new devices of a room)", registry=registry)
        self._share_devices = Counter(
            "e2eproxy_room_key_share_devices", "Devices sent a room key", registry=registry)
        self._to_device_in = Counter(
            "e2eproxy_to_device_received", "To-device events taken in, by type (an Olm-encrypted "
            "one by the type inside, when it decrypted)", ("type",), registry=registry)
        self._to_device_out = Counter(
            "e2eproxy_to_device_sent", "To-device messages sent (one a device), by type as sent",
            ("type",), registry=registry)
        self._commits = Histogram(
            "e2eproxy_store_commit_seconds", "Time to commit one engine step to the store",
            ("backend",), buckets=COMMIT_BUCKETS, registry=registry)
        self._losses = Counter(
            "e2eproxy_lease_losses", "Accounts whose store lease another instance took while "
            "this one held it", registry=registry)
        self._handovers = Counter(
            "e2eproxy_lease_handovers", "Accounts handed over to another instance that asked "
            "for them", registry=registry)
        self._adoptions = Counter(
            "e2eproxy_lease_adoptions", "Accounts taken over because no instance drove them",
            registry=registry)
        self.accounts = AccountsCollector()
        registry.register(self.accounts)
        if process:
            ProcessCollector(registry=registry)
        for cause in FAILURE_CAUSES:  # present from the start, so a rate() sees the first one
            self._failures.labels(cause)
        self._commit_children: dict[type, Any] = {}

    # -- crypto --------------------------------------------------------------------------
    def count_decryptions(self, results: Iterable[Result]) -> None:
        decrypted = 0
        for result in results:
            if isinstance(result, Decrypted):
                decrypted += 1
            else:
                cause = WITHHELD if result.withheld_code is not None else result.reason.value
                self._failures.labels(cause).inc()
        if decrypted:
            self._decrypted.inc(decrypted)

    def count_key_share(self, requests: Sequence[OutgoingRequest]) -> None:
        """The to-device requests of a room key share, all sent."""
        devices = sum(message_count(r) for r in requests if r.kind is RequestKind.TO_DEVICE
                      and to_device_type(r) == "m.room.encrypted")
        if devices:
            self._shares.inc()
            self._share_devices.inc(devices)

    def count_to_device_sent(self, request: OutgoingRequest) -> None:
        if request.kind is RequestKind.TO_DEVICE:
            count = message_count(request)
            if count:
                self._to_device_out.labels(to_device_label(to_device_type(request))).inc(count)

    def count_to_device_received(self, event_types: Iterable[str]) -> None:
        for event_type in event_types:
            self._to_device_in.labels(to_device_label(event_type)).inc()

    # -- store and leases ----------------------------------------------------------------
    def observe_commit(self, store: object, seconds: float) -> None:
        child = self._commit_children.get(type(store))
        if child is None:
            child = self._commit_children[type(store)] = self._commits.labels(
                backend_label(store))
        child.observe(seconds)

    def count_lease_lost(self) -> None:
        self._losses.inc()

    def count_lease_handed_over(self) -> None:
        self._handovers.inc()

    def count_adoptions(self, accounts: int) -> None:
        self._adoptions.inc(accounts)
