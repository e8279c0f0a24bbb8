"""The real proxy application (from create_app) in front of the stub homeserver (`stub`, and the
client sessions: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from e2eproxy.config import Config, EncryptionConfig, ServerConfig, StoreConfig
from e2eproxy.proxy.app import create_app
from e2eproxy.store import MemoryStore, Store
from e2eproxy.timing import Timer
from tests.support.plain_client import PlainClient, login_all
from tests.support.processes import ProxyProcess, running_proxy
from tests.support.stub_homeserver import StubHomeserver

StartProxy = Callable[..., Awaitable[str]]


@pytest.fixture
def proxy_process(stub: StubHomeserver, tmp_path: Path) -> Iterator[ProxyProcess]:
    """`e2eproxy run` in front of the stub as a real child process, for tests that read its own
    memory apart from the test process and the stub (its stderr also in tmp_path/proxy.log)."""
    assert stub.base_url is not None
    with running_proxy(stub.base_url, tmp_path / "data", tmp_path / "proxy.log") as proxy:
        yield proxy


@dataclass
class RunningProxy:
    """A proxy app served for a test, with the store it uses (the test may share or reopen it)."""

    url: str
    store: Store
    server: TestServer

    async def stop(self) -> None:
        """Shut the app down (workers stopped, leases released); the store stays open."""
        await self.server.close()


StartE2EEProxy = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
async def start_e2ee_proxy(stub: StubHomeserver, tmp_path: Path) -> AsyncIterator[StartE2EEProxy]:
    """`await start_e2ee_proxy(store=..., encryption=EncryptionConfig(...), timer=...,
    data_dir=..., **server_overrides)` serves create_app on an ephemeral port; without `store`,
    a fresh MemoryStore; without `timer`, real time. Its data dir (the media spool) is
    tmp_path/proxy unless given, never the developer's, and no keyring is used."""
    started: list[RunningProxy] = []

    async def start(
        *,
        store: Store | None = None,
        encryption: EncryptionConfig | None = None,
        timer: Timer | None = None,
        data_dir: Path | None = None,
        **overrides: Any,
    ) -> RunningProxy:
        assert stub.base_url is not None
        server = replace(ServerConfig(name="test", homeserver=stub.base_url), **overrides)
        config = Config(
            servers=(server,),
            encryption=encryption or EncryptionConfig(),
            store=StoreConfig(data_dir=data_dir or tmp_path / "proxy", use_keyring=False),
        )
        used = store if store is not None else MemoryStore()
        test_server = TestServer(
            create_app(server, config, store=used, timer=timer), host="127.0.0.1"
        )
        await test_server.start_server()
        running = RunningProxy(str(test_server.make_url("")).rstrip("/"), used, test_server)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


@pytest.fixture
def start_proxy(start_e2ee_proxy: StartE2EEProxy) -> StartProxy:
    """`await start_proxy(**server_overrides)`: `start_e2ee_proxy`, for its base URL only."""

    async def start(**overrides: Any) -> str:
        return (await start_e2ee_proxy(**overrides)).url

    return start


@pytest.fixture
async def proxy_url(start_proxy: StartProxy) -> str:
    return await start_proxy()


async def proxied(
    stub: StubHomeserver,
    session: aiohttp.ClientSession,
    start: StartE2EEProxy,
    *names: str,
    encryption: EncryptionConfig | None = None,
) -> tuple[RunningProxy, list[PlainClient]]:
    """A proxy from `start` (`start_e2ee_proxy`), and each name registered on the stub and
    logged in through it."""
    proxy = await start(encryption=encryption)
    return proxy, await login_all(session, proxy.url, stub, *names)
