"""Fixtures shared by the tiers that run against a real Synapse (tests/e2e, tests/interop):
one Synapse per test session, one proxy per test. tests/integration has its own `proxy_url`
(the stub homeserver's), which takes precedence there."""

from __future__ import annotations

import atexit
import itertools
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.support.synapse import SynapseServer

_localpart_counter = itertools.count(1)


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    """A running Synapse (SQLite, 127.0.0.1, rate limits off), stopped by PID at session end."""
    server = SynapseServer(tmp_path_factory.mktemp("synapse"))
    # Belt and braces: pytest runs fixture teardown on failures and Ctrl-C; atexit covers an
    # interpreter exit that skips it, and the child also gets PR_SET_PDEATHSIG (see synapse.py).
    atexit.register(server.stop)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        atexit.unregister(server.stop)


@pytest.fixture
def localpart(request: pytest.FixtureRequest) -> str:
    """A fresh localpart prefix per test: Synapse lives for the whole session."""
    name = "".join(c for c in request.node.name.lower() if c.isalnum())[:20]
    return f"{name}{next(_localpart_counter)}"


@pytest.fixture
async def proxy_url(synapse: SynapseServer, tmp_path: Path) -> AsyncIterator[str]:
    """The e2eproxy app for `synapse`, served on 127.0.0.1; yields its base URL (no slash)."""
    from e2eproxy.config import Config, ServerConfig, StoreConfig, parse_listen
    from e2eproxy.proxy.app import create_app

    # Bind first, so the port the config advertises is the one served, with no race in between.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = ServerConfig(
        name="test",
        homeserver=synapse.base_url,
        listen=parse_listen(f"127.0.0.1:{port}", "listen"),
        public_url=None,
    )
    # A store of its own per test, unlocked by a key file (never the developer's keyring).
    store = StoreConfig(data_dir=tmp_path / "proxy-data", use_keyring=False)
    config = Config(servers=(server,), store=store)
    runner = web.AppRunner(create_app(server, config))
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        sock.close()
