"""Two `e2eproxy run` processes on one PostgreSQL store, as behind a load balancer: a client's
device moves between them (one crashed; later the load balancer sends the token back) and no
message is lost either way, nothing reaches the server in plaintext, and the device keeps its
one identity: the instance that takes it over drives it with the keys the other one saved.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.support.e2e_clients import Plain, decrypted_message, plain_with_peer_room
from tests.support.nio_peer import NioPeer, PeerFactory
from tests.support.processes import ProxyProcess, free_port
from tests.support.synapse import SynapseServer
from tests.support.wire import assert_ciphertext_only

pytestmark = [pytest.mark.e2e, pytest.mark.fresh_connections]

# Every instance of a deployment unwraps the store's data key with the same passphrase.
PASSPHRASE = "one passphrase for every instance"


def instance(tmp_path: Path, name: str, synapse: SynapseServer, store_url: str) -> ProxyProcess:
    """An instance with a data dir of its own (media spool) and the shared store."""
    config = tmp_path / f"{name}.toml"
    config.write_text(f'[store]\nurl = "{store_url}"\nuse_keyring = false\n')
    return ProxyProcess(
        synapse.base_url, free_port(), tmp_path / name, log_path=tmp_path / f"{name}.log",
        config=config, env={"E2EPROXY_STORE_PASSPHRASE": PASSPHRASE},
    )


async def both_ways(plain: Plain, peer: NioPeer, room_id: str, label: str) -> list[str]:
    """A message each way, each read decrypted on the other side; their event ids."""
    out = await plain.send_text(room_id, f"{label}: from the plain client")
    [seen] = await peer.wait_for_bodies(room_id, [f"{label}: from the plain client"])
    assert (seen.event_id, seen.encrypted) == (out, True)
    back = await peer.send_text(room_id, f"{label}: from nio")
    decrypted_message(await plain.wait_for_event(room_id, back), f"{label}: from nio",
                      peer.user_id)
    return [out, back]


async def test_a_device_moves_between_instances_on_one_postgres_store(
    session: aiohttp.ClientSession,
    synapse: SynapseServer,
    nio_peers: PeerFactory,
    localpart: str,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    first = instance(tmp_path, "first", synapse, postgres_url)
    second = instance(tmp_path, "second", synapse, postgres_url)
    try:
        first.start()
        second.start()
        plain, peer, room_id = await plain_with_peer_room(
            session, first.url, synapse, nio_peers, localpart, name="instances"
        )
        device_keys = (await peer.query_devices(plain.user_id))[plain.device_id].keys
        sent = await both_ways(plain, peer, room_id, "through the first")

        # The first instance crashes; the load balancer sends the client to the second, which
        # waits out the dead lease and goes on with the device's keys from the store.
        first.kill()
        plain.client.base_url = second.url
        sent += await both_ways(plain, peer, room_id, "through the second")

        # The first comes back and the load balancer moves the token back: the second hands
        # the device over (within a renewal round) instead of both driving it.
        first.start()
        plain.client.base_url = first.url
        sent += await both_ways(plain, peer, room_id, "back through the first")
        handed = "handing " + plain.user_id
        assert any(handed in line for line in second.lines), second.tail()

        # Everything reads back through either instance, and the server only ever had
        # ciphertext; the device is the one it was, with the same keys.
        for proxy in (first, second):
            plain.client.base_url = proxy.url
            history = {e["event_id"]: e for e in await plain.client.messages(room_id)}
            assert all(history[e]["type"] == "m.room.message" for e in sent), proxy.url
        raw = await synapse.room_messages(peer.access_token, room_id)
        assert sorted(e["event_id"] for e in assert_ciphertext_only(raw)) == sorted(sent)
        assert peer.undecryptable(room_id) == []
        devices = await peer.query_devices(plain.user_id)
        assert set(devices) == {plain.device_id}
        assert devices[plain.device_id].keys == device_keys
    finally:
        first.stop()
        second.stop()
