"""The durable queue of outgoing requests, with in-flight tracking."""

from __future__ import annotations

from collections.abc import Iterable

from e2eproxy.crypto.changes import ChangeLog
from e2eproxy.protocol.api import OutgoingRequest


class RequestQueue:
    """Requests waiting to be sent or waiting for their answer; each handed out once."""

    def __init__(self, log: ChangeLog) -> None:
        self._log = log
        self._pending: dict[str, OutgoingRequest] = {}
        self._in_flight: set[str] = set()

    def load(self, requests: list[OutgoingRequest]) -> None:
        """Requests persisted before a restart: handed out again by ``take_unsent``."""
        for request in requests:
            self._pending[request.id] = request

    def add(self, request: OutgoingRequest, *, in_flight: bool = False) -> OutgoingRequest:
        self._pending[request.id] = request
        if in_flight:
            self._in_flight.add(request.id)
        self._log.request_added(request)
        return request

    def take_unsent(self) -> list[OutgoingRequest]:
        unsent = [r for r in self._pending.values() if r.id not in self._in_flight]
        self._in_flight.update(r.id for r in unsent)
        return unsent

    def take(self, request_ids: Iterable[str]) -> list[OutgoingRequest]:
        """Those of ``request_ids`` that wait and were not handed out yet, handed out now."""
        found = [self._pending[i] for i in sorted(request_ids)
                 if i in self._pending and i not in self._in_flight]
        self._in_flight.update(r.id for r in found)
        return found

    def pop(self, request_id: str) -> OutgoingRequest | None:
        request = self._pending.pop(request_id, None)
        self._in_flight.discard(request_id)
        if request is not None:
            self._log.request_removed(request_id)
        return request
