"""The service runs on uvloop where it is installed, and on asyncio's loop where it is not or
where E2EPROXY_EVENT_LOOP=asyncio says so."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from e2eproxy import event_loop


async def loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_uvloop_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.ENV, raising=False)
    assert event_loop.run(loop_type()) is uvloop.Loop


def test_asyncio_where_uvloop_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.ENV, raising=False)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert event_loop.loop_factory() is None
    assert not issubclass(event_loop.run(loop_type()), uvloop.Loop)


def test_asyncio_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.ENV, "asyncio")
    assert not issubclass(event_loop.run(loop_type()), uvloop.Loop)
