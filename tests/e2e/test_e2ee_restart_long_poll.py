"""SIGTERM with a client /sync long-poll open: the proxy stops within its shutdown timeout.

A client behind the proxy nearly always has a long-poll open; a restart must not wait for it
(aiohttp alone would wait twice its shutdown_timeout for a handler awaiting the upstream)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.support.e2e_clients import plain_with_peer_room
from tests.support.nio_peer import PeerFactory
from tests.support.processes import SIGTERM_EXIT_S, ProxyProcess
from tests.support.synapse import SynapseServer

pytestmark = [pytest.mark.e2e, pytest.mark.fresh_connections]


async def test_sigterm_with_open_long_poll_exits_within_shutdown_timeout(
    session: aiohttp.ClientSession,
    proxy_process: ProxyProcess,
    synapse: SynapseServer,
    nio_peers: PeerFactory,
    localpart: str,
) -> None:
    plain, _peer, _room = await plain_with_peer_room(
        session, proxy_process.url, synapse, nio_peers, localpart
    )
    await plain.sync_once(timeout_ms=0)
    long_poll = asyncio.create_task(
        plain.client.call(
            "GET",
            "/_matrix/client/v3/sync",
            params={"timeout": "30000", "since": str(plain.client.next_batch)},
        )
    )
    await asyncio.sleep(0.3)
    assert not long_poll.done(), long_poll
    # A deadline, not a measurement: terminate() fails the test if the proxy is still there.
    code = await asyncio.to_thread(proxy_process.terminate, SIGTERM_EXIT_S)
    assert code == 0, proxy_process.tail()
    await asyncio.wait([long_poll], timeout=2)
    assert long_poll.done()
    long_poll.exception()  # answered or cut off: either is fine (the client syncs again)
    # And the restart still works with the same token.
    proxy_process.start()
    assert (await plain.client.whoami())["device_id"] == plain.device_id
