"""Fixtures of the interop tier: the proxy (tests/conftest.py) on a real Synapse, plain clients
behind it, and js peers (matrix-js-sdk with rust-sdk's crypto) talking to Synapse directly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.support.e2e_clients import register_and_login
from tests.support.js_peer import JsPeer, ensure_installed
from tests.support.plain_client import PlainClient
from tests.support.synapse import SynapseServer


class JsPeers:
    """Starts js peer devices: `await peers.user("bob")` registers bob on Synapse and logs in
    his first device; `await peers.device(bob)` logs in another device of the same user."""

    def __init__(self, synapse: SynapseServer, log_dir: Path) -> None:
        self._synapse = synapse
        self._log_dir = log_dir
        self._passwords: dict[str, str] = {}
        self.started: list[JsPeer] = []

    async def _start(self, localpart: str, password: str) -> JsPeer:
        name = f"{localpart}-{len(self.started) + 1}"
        peer = await JsPeer.start(self._log_dir / f"{name}.log")
        self.started.append(peer)
        await peer.login(self._synapse.base_url, localpart, password, f"js peer {name}")
        return peer

    async def user(self, localpart: str) -> JsPeer:
        password = f"{localpart}-password"
        user = await self._synapse.register(localpart, password=password)
        self._passwords[user.user_id] = password
        return await self._start(localpart, password)

    async def login(self, localpart: str, password: str) -> JsPeer:
        """A js device of a user registered elsewhere (e.g. the plain client's own user)."""
        return await self._start(localpart, password)

    async def device(self, of: JsPeer) -> JsPeer:
        localpart = of.user_id.removeprefix("@").split(":", 1)[0]
        return await self._start(localpart, self._passwords[of.user_id])


@pytest.fixture(scope="session")
def js_installed() -> None:
    ensure_installed()  # a clear failure naming the npm command, never a skip


@pytest.fixture
async def js_peers(
    js_installed: None, synapse: SynapseServer, tmp_path: Path
) -> AsyncIterator[JsPeers]:
    peers = JsPeers(synapse, tmp_path / "js-logs")
    try:
        yield peers
    finally:
        for peer in peers.started:
            await peer.close()


PlainLogin = Callable[[str], Awaitable[PlainClient]]


@pytest.fixture
def plain_login(
    session: aiohttp.ClientSession, proxy_url: str, synapse: SynapseServer
) -> PlainLogin:
    """`await plain_login("alice")`: registered on Synapse, logged in through the proxy."""

    async def login(localpart: str) -> PlainClient:
        return await register_and_login(session, proxy_url, synapse, localpart)

    return login
