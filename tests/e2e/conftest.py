"""Fixtures of the real-Synapse tier (Synapse itself and the proxy: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.support.nio_peer import NioPeer
from tests.support.synapse import SynapseServer

PeerFactory = Callable[[str], Awaitable[NioPeer]]


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
