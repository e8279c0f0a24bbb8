"""Fixtures of the real-Synapse tier: nio peers and the proxy as a child process (Synapse itself
and the in-process proxy: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.nio_peer import NioPeer, PeerFactory
from tests.support.processes import ProxyProcess, running_proxy
from tests.support.synapse import SynapseServer


@pytest.fixture
async def nio_peers(synapse: SynapseServer, tmp_path: Path) -> AsyncIterator[PeerFactory]:
    """Factory: `await nio_peers("bob")` registers that localpart on Synapse and logs in a
    matrix-nio E2EE peer against Synapse directly, store under tmp_path; all closed afterwards."""
    peers: list[NioPeer] = []

    async def make(localpart: str) -> NioPeer:
        password = f"{localpart}-password"
        user = await synapse.register(localpart, password=password)
        peer = await NioPeer.login(synapse.base_url, user.user_id, password, tmp_path / localpart)
        peers.append(peer)
        return peer

    try:
        yield make
    finally:
        for peer in peers:
            await peer.close()


@pytest.fixture
def proxy_process(synapse: SynapseServer, tmp_path: Path) -> Iterator[ProxyProcess]:
    """`e2eproxy run` for `synapse` as a real child process, for tests that stop, kill and restart
    it on the same port and store (its stderr also in tmp_path/proxy.log)."""
    with running_proxy(synapse.base_url, tmp_path / "proxy-data", tmp_path / "proxy.log") as proxy:
        yield proxy
