"""One global stream ordering shared by everything that /sync reports, plus a notifier.

A sync token ``s<N>`` means "everything up to and including position N". Every new room
event, account-data change, to-device message and device-list change takes the next
position, so comparing positions is enough to decide what a client has already seen.
"""

from __future__ import annotations

import asyncio
import contextlib

from .errors import invalid_param


class Stream:
    def __init__(self) -> None:
        self.position = 0
        self._changed = asyncio.Event()
        self._closed = asyncio.Event()
        self.closing = False

    def advance(self) -> int:
        """Take the next position. Call :meth:`notify` once the new data is stored."""
        self.position += 1
        return self.position

    def notify(self) -> None:
        """Wake every long-polling /sync; each re-checks whether anything is new for it."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Sleep until the next :meth:`notify` or ``timeout`` seconds, whichever comes first."""
        if self.closing or timeout <= 0:
            return
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds``; False if the server began shutting down first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), seconds)
        return not self.closing

    def close(self) -> None:
        self.closing = True
        self._closed.set()
        self.notify()

    def token(self, position: int | None = None) -> str:
        return f"s{self.position if position is None else position}"


def parse_token(token: str, param: str = "since") -> int:
    """Parse ``s<N>`` back to a position; anything else is the client's error."""
    if token.startswith("s") and token[1:].isdigit():
        return int(token[1:])
    raise invalid_param(f"Invalid {param} token: {token!r}")
