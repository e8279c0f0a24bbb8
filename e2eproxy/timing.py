"""Time for the I/O shell: the wall clock the engine reads, a monotonic clock for the shell's
own deadlines (token cache, member lists), and the sleeps of its retries, backoffs and lease
renewals, in one injectable object, so a test moves time instead of waiting for it."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Protocol


class Timer(Protocol):
    def now_ms(self) -> int:
        """Wall-clock milliseconds (what the engine's ``Clock`` gives)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps, for intervals."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemTimer:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def spread(seconds: float, fraction: float) -> float:
    """`seconds` less a random part of at most `fraction` of it: the timers of many accounts
    that started together (a restart, a fleet logging in) do not stay in step."""
    return seconds * (1.0 - fraction * random.random())
