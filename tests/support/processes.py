"""Helpers for tests that run e2eproxy as a real process."""

from __future__ import annotations

from typing import IO


def wait_for_line(stream: IO[str], needle: str, max_lines: int = 50) -> str:
    """Read lines until one contains `needle` (warnings may come first); '' at end of stream."""
    for _ in range(max_lines):
        line = stream.readline()
        if not line or needle in line:
            return line
    return ""
