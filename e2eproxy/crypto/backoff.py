"""Exponential backoff for failing servers and devices: 15 s doubling, capped at 15 min."""

from __future__ import annotations

BASE_DELAY_MS = 15_000
MAX_DELAY_MS = 15 * 60 * 1000


class FailuresCache:
    """Remembers failures per key and says whether the key is still backed off."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, int]] = {}

    def failed(self, key: str, now_ms: int) -> None:
        count = self._entries.get(key, (0, 0))[0] + 1
        delay = min(BASE_DELAY_MS * 2 ** (count - 1), MAX_DELAY_MS)
        self._entries[key] = (count, now_ms + delay)

    def succeeded(self, key: str) -> None:
        self._entries.pop(key, None)

    def is_failing(self, key: str, now_ms: int) -> bool:
        entry = self._entries.get(key)
        return entry is not None and now_ms < entry[1]

    def delay_ms(self, key: str) -> int:
        """The current backoff step for ``key`` (0 when it is not failing); for tests."""
        entry = self._entries.get(key)
        return 0 if entry is None else min(BASE_DELAY_MS * 2 ** (entry[0] - 1), MAX_DELAY_MS)
