"""The event loop the service runs on: uvloop where it is installed (a platform-conditional
dependency: Linux and macOS on CPython), asyncio's own elsewhere or when asked for.

uvloop's loop does the socket and timer work of each request in C; with pass-through requests
the proxy's whole cost is that kind of work (see the README's benchmark notes for the figures).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
# E2EPROXY_EVENT_LOOP=asyncio runs on asyncio's loop even where uvloop is installed (to compare
# the two, or to rule uvloop out).
ENV = "E2EPROXY_EVENT_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's new_event_loop, or None for asyncio's default."""
    if os.environ.get(ENV, "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on the loop `loop_factory` names."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
