"""The fixtures every tier shares, in one place: the HTTP client sessions (`session`, and
`exact_session` for byte-exact pass-through checks), the stub homeserver (`stub`), and for the
tiers that run against a real Synapse (tests/e2e, tests/interop) one Synapse per test session and
one proxy per test. tests/integration has its own `proxy_url` (the stub homeserver's), which takes
precedence there. The shared helpers that are not fixtures live in tests/support/."""

from __future__ import annotations

import atexit
import itertools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support.postgres import PostgresCluster
from tests.support.stub_homeserver import StubHomeserver, running_stub
from tests.support.synapse import SynapseServer

_localpart_counter = itertools.count(1)
# A hung proxy (or server) fails the request instead of stalling the test until pytest-timeout.
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=60)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fresh_connections: the `session` fixture opens a new connection for every request",
    )


@pytest.fixture
async def session(request: pytest.FixtureRequest) -> AsyncIterator[aiohttp.ClientSession]:
    """The tests' HTTP client: one aiohttp session per test, every request bounded by
    HTTP_TIMEOUT. In a test marked `fresh_connections` (one that kills the proxy under its
    clients) no connection is pooled, so a keep-alive connection to the killed process cannot
    turn the next request into a spurious "server disconnected"."""
    fresh = request.node.get_closest_marker("fresh_connections") is not None
    connector = aiohttp.TCPConnector(force_close=True) if fresh else None
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT, connector=connector) as client:
        yield client


@pytest.fixture
async def exact_session() -> AsyncIterator[aiohttp.ClientSession]:
    """Like `session`, but bodies come back exactly as the proxy sent them (auto_decompress
    off): for the pass-through tests that compare bytes and Content-Encoding."""
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT, auto_decompress=False) as client:
        yield client


@pytest.fixture
async def stub() -> AsyncIterator[StubHomeserver]:
    """The stub homeserver, served on 127.0.0.1; a test fails if it raised inside a handler."""
    async with running_stub() as served:
        yield served
    assert served.internal_errors == []


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


@dataclass(frozen=True)
class ServedProxy:
    """The proxy app a test talks to: its base URL (no slash) and the app itself (for its
    account registry, as the control interface reaches it)."""

    url: str
    app: web.Application


StartSynapseProxy = Callable[[str], Awaitable[ServedProxy]]


@pytest.fixture
async def start_synapse_proxy(
    synapse: SynapseServer, tmp_path: Path
) -> AsyncIterator[StartSynapseProxy]:
    """`await start_synapse_proxy("name")`: an e2eproxy app for `synapse` on 127.0.0.1 with a
    data dir of its own (`tmp_path/name`: a second one is a wiped or another machine's proxy)."""
    from e2eproxy.config import Config, ServerConfig, StoreConfig, parse_listen
    from e2eproxy.proxy.app import create_app

    runners: list[tuple[web.AppRunner, socket.socket]] = []

    async def start(name: str) -> ServedProxy:
        # Bind first, so the port the config advertises is the one served, with no race.
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
        # A store of its own, unlocked by a key file (never the developer's keyring).
        store = StoreConfig(data_dir=tmp_path / name, use_keyring=False)
        app = create_app(server, Config(servers=(server,), store=store))
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append((runner, sock))
        await web.SockSite(runner, sock).start()
        return ServedProxy(f"http://127.0.0.1:{port}", app)

    try:
        yield start
    finally:
        for runner, sock in reversed(runners):
            await runner.cleanup()
            sock.close()


@pytest.fixture
async def synapse_proxy(start_synapse_proxy: StartSynapseProxy) -> ServedProxy:
    """The e2eproxy app for `synapse`, served on 127.0.0.1."""
    return await start_synapse_proxy("proxy-data")


@pytest.fixture
def proxy_url(synapse_proxy: ServedProxy) -> str:
    """The base URL (no slash) of `synapse_proxy`."""
    return synapse_proxy.url


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One PostgreSQL server for the session (started on first use, deleted at the end)."""
    cluster = PostgresCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """An empty database (a schema, in fact) of this test's own."""
    url = postgres_cluster.new_schema()
    yield url
    postgres_cluster.drop_schema(url)
