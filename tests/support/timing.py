"""Time in tests. `ManualTimer`, a timer the test moves: `sleep` waits until `advance` passes its
deadline, so the shell's retries, backoffs, caches and lease renewals run in test time, with no
real waiting and no loop spinning on a sleep that returns at once. `ScaledTimer`, real time whose
sleeps are shortened, for tests that let the shell run by itself. `until`, a bounded wait in real
time for something another process (or task) does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

START_MS = 1_700_000_000_000


class ManualTimer:
    def __init__(self, start_ms: int = START_MS) -> None:
        self._ms = float(start_ms)
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self.slept: list[float] = []  # every sleep asked for, in order

    def now_ms(self) -> int:
        return int(self._ms)

    def monotonic(self) -> float:
        return self._ms / 1000

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._ms + seconds * 1000, future))
        await future

    def advance(self, seconds: float) -> None:
        self._ms += seconds * 1000
        due = [(at, f) for at, f in self._sleepers if at <= self._ms]
        self._sleepers = [(at, f) for at, f in self._sleepers if at > self._ms]
        for _, future in due:
            if not future.done():
                future.set_result(None)

    async def sleeping(self, count: int = 1, deadline_s: float = 5.0) -> None:
        """Wait (in real time, bounded) until `count` sleeps are pending."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while sum(1 for _, f in self._sleepers if not f.done()) < count:
            if loop.time() > end:
                raise AssertionError(f"{count} sleeps never started; slept so far: {self.slept}")
            await asyncio.sleep(0.005)


class ScaledTimer:
    """The wall clock, but every sleep lasts `scale` times what was asked (and is recorded):
    retries and backoffs keep their order and happen quickly, and a test reads what the shell
    asked for (e.g. a 429's retry_after_ms) in `slept`."""

    def __init__(self, scale: float = 0.01) -> None:
        self.scale = scale
        self.slept: list[float] = []

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(max(0.0, seconds) * self.scale)


async def until(
    what: str,
    probe: Callable[[], Awaitable[T]],
    deadline_s: float = 10.0,
    interval_s: float = 0.05,
) -> T:
    """Await `probe` every `interval_s` until it returns something true, and return that; fail
    naming `what` once `deadline_s` (real time) has passed."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        value = await probe()
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval_s)
