"""Time as an injected dependency: the engine never reads the wall clock itself."""

from __future__ import annotations

from typing import Protocol


class Clock(Protocol):
    """Anything that tells the current time in milliseconds since the Unix epoch."""

    def now_ms(self) -> int: ...


class ManualClock:
    """A clock that only moves when told to; for tests and benchmarks."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = start_ms

    def now_ms(self) -> int:
        return self._now

    def advance(self, ms: int) -> None:
        """Move time forward by ``ms`` milliseconds."""
        self._now += ms
