"""Per-route fault injection: error statuses, delays, dropped connections, rate limits."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

JsonDict = dict[str, Any]

_DEFAULT_ERRCODES = {
    400: "M_BAD_JSON", 401: "M_UNKNOWN_TOKEN", 403: "M_FORBIDDEN", 404: "M_NOT_FOUND",
    429: "M_LIMIT_EXCEEDED",
}


@dataclass
class Fault:
    """One injected fault. ``times=None`` means forever; ``hits`` counts how often it fired.

    The fault sleeps ``delay`` seconds first (less if the stub shuts down meanwhile), then
    drops the connection (``drop``), or answers ``status`` with Matrix error JSON, or, with
    neither, lets the request through. ``late``: the request is handled at once but its answer
    held back that many seconds (a server that did the work and answers after the client gave
    up). ``raw``: these bytes are the answer (``status``, else 200), as JSON no parser may
    read. ``query_regex`` narrows it to requests whose raw query
    string matches (``re.search``): e.g. the proxy's background /sync, which alone asks for
    ``set_presence=offline``, apart from its client's.
    """

    path_regex: str
    method: str | None = None
    status: int | None = None
    errcode: str | None = None
    error: str | None = None
    retry_after_ms: int | None = None
    body: JsonDict | None = None
    delay: float = 0.0
    drop: bool = False
    times: int | None = None
    query_regex: str | None = None
    late: float = 0.0
    raw: bytes | None = None
    hits: int = 0
    _pattern: re.Pattern[str] = field(init=False, repr=False)
    _query: re.Pattern[str] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._pattern = re.compile(self.path_regex)
        self._query = None if self.query_regex is None else re.compile(self.query_regex)
        if self.method is not None:
            self.method = self.method.upper()

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times

    def matches(self, method: str, path: str, query: str = "") -> bool:
        if self.exhausted or (self.method is not None and self.method != method.upper()):
            return False
        if self._query is not None and self._query.search(query) is None:
            return False
        return self._pattern.search(path) is not None

    def error_body(self) -> JsonDict:
        if self.body is not None:
            return self.body
        assert self.status is not None
        body: JsonDict = {
            "errcode": self.errcode or _DEFAULT_ERRCODES.get(self.status, "M_UNKNOWN"),
            "error": self.error or f"Injected fault ({self.status})",
        }
        if self.status == 429:
            body["retry_after_ms"] = 1000 if self.retry_after_ms is None else self.retry_after_ms
        return body


class FaultRegistry:
    """``stub.faults``: faults are checked in the order added; the first live match fires."""

    def __init__(self) -> None:
        self.faults: list[Fault] = []

    def add(
        self, path_regex: str = ".*", *, method: str | None = None, status: int | None = None,
        errcode: str | None = None, error: str | None = None,
        retry_after_ms: int | None = None, body: JsonDict | None = None,
        delay: float = 0.0, drop: bool = False, times: int | None = None,
        query_regex: str | None = None, late: float = 0.0, raw: bytes | None = None,
    ) -> Fault:
        """Add a fault for requests whose path matches ``path_regex`` (``re.search``), and
        whose query string matches ``query_regex`` when one is given."""
        if status is None and retry_after_ms is not None:
            status = 429
        fault = Fault(
            path_regex, method, status, errcode, error, retry_after_ms, body, delay, drop, times,
            query_regex, late, raw,
        )
        self.faults.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        self.faults.remove(fault)

    def clear(self) -> None:
        self.faults.clear()

    def take(self, method: str, path: str, query: str = "") -> Fault | None:
        """Find the first live fault for this request and count a hit on it."""
        for fault in self.faults:
            if fault.matches(method, path, query):
                fault.hits += 1
                return fault
        return None
