"""The real proxy application (from create_app) in front of the stub homeserver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from e2eproxy.config import Config, ServerConfig
from e2eproxy.proxy.app import create_app
from e2eproxy.store import MemoryStore
from tests.support.stub_homeserver import StubHomeserver, running_stub

StartProxy = Callable[..., Awaitable[str]]


@pytest.fixture
async def stub() -> AsyncIterator[StubHomeserver]:
    async with running_stub() as served:
        yield served
    assert served.internal_errors == []


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # auto_decompress off: tests compare bytes exactly as the proxy sent them.
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@pytest.fixture
async def start_proxy(stub: StubHomeserver) -> AsyncIterator[StartProxy]:
    """`await start_proxy(**server_overrides)` serves create_app on an ephemeral port."""
    servers: list[TestServer] = []

    async def start(**overrides: Any) -> str:
        assert stub.base_url is not None
        server = replace(ServerConfig(name="test", homeserver=stub.base_url), **overrides)
        app = create_app(server, Config(servers=(server,)), store=MemoryStore())
        test_server = TestServer(app, host="127.0.0.1")
        await test_server.start_server()
        servers.append(test_server)
        return str(test_server.make_url("")).rstrip("/")

    yield start
    for test_server in servers:
        await test_server.close()


@pytest.fixture
async def proxy_url(start_proxy: StartProxy) -> str:
    return await start_proxy()
