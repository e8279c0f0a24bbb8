"""The proxy restarts without losing anything: a real `e2eproxy run` process, stopped with SIGTERM
and killed with SIGKILL in the middle of a burst of sends, then started again on the same store.

After a restart the client's token still works, the old history still decrypts, the device keeps
its one identity on the server (no second device, no replaced keys), and a send that the crash
interrupted is retried by the client with the same txn id: each message reaches the other side
exactly once, with the event id it was first given, and only as ciphertext.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest

from tests.support.e2e_clients import Plain, decrypted_message, plain_with_peer_room, show
from tests.support.nio_peer import PeerFactory
from tests.support.processes import SIGTERM_EXIT_S, ProxyProcess
from tests.support.synapse import SynapseServer
from tests.support.wire import assert_ciphertext_only

# The proxy is killed under its clients: `session` pools no connection to the dead process.
pytestmark = [pytest.mark.e2e, pytest.mark.fresh_connections]

# A bound on the restart, not its usual time (the dead holder's leases are taken at once).
RESTART_AFTER_KILL_S = 30.0
BURST = 30
AT_ONCE = 3


async def own_devices(synapse: SynapseServer, plain: Plain) -> dict[str, Any]:
    """The user's devices as the server lists them, and their device keys, read directly."""
    token = plain.client.access_token
    devices = await synapse.client_request("GET", "/_matrix/client/v3/devices", token)
    keys = await synapse.client_request(
        "POST", "/_matrix/client/v3/keys/query", token, {"device_keys": {plain.user_id: []}}
    )
    return {
        "devices": sorted(d["device_id"] for d in devices["devices"]),
        "keys": keys["device_keys"].get(plain.user_id, {}),
    }


def bodies_of(history: list[dict[str, Any]]) -> list[str]:
    return [e["content"].get("body") for e in history if e["type"] == "m.room.message"]


async def test_sigterm_restart_keeps_token_device_and_history(
    session: aiohttp.ClientSession,
    proxy_process: ProxyProcess,
    synapse: SynapseServer,
    nio_peers: PeerFactory,
    localpart: str,
) -> None:
    plain, peer, room_id = await plain_with_peer_room(
        session, proxy_process.url, synapse, nio_peers, localpart, name="restarts"
    )
    nio_view = await peer.query_devices(plain.user_id)
    assert set(nio_view) == {plain.device_id}, sorted(nio_view)
    device_keys = nio_view[plain.device_id].keys
    # (The admin registration made a device of its own, without keys.)
    server_view = await own_devices(synapse, plain)
    assert set(server_view["keys"]) == {plain.device_id}, show(server_view)

    out_before = await plain.send_text(room_id, "before the restart, from the plain client")
    await peer.wait_for_bodies(room_id, ["before the restart, from the plain client"])
    in_before = await peer.send_text(room_id, "before the restart, from nio")
    got = await plain.wait_for_event(room_id, in_before)
    decrypted_message(got, "before the restart, from nio", peer.user_id)

    started = time.monotonic()
    assert proxy_process.terminate(timeout=SIGTERM_EXIT_S) == 0, proxy_process.tail()
    print(f"SIGTERM: exited in {time.monotonic() - started:.2f} s")
    proxy_process.start()

    # The same token, with no new login: the proxy knows it again from its store.
    whoami = await plain.client.whoami()
    assert (whoami["user_id"], whoami.get("device_id")) == (plain.user_id, plain.device_id)
    answer = await plain.sync_once(timeout_ms=0)
    assert "m.room.encrypted" not in {
        e["type"]
        for e in answer.get("rooms", {})
        .get("join", {})
        .get(room_id, {})
        .get("timeline", {})
        .get("events", [])
    }, show(answer)

    # The old history, both directions, decrypts with the keys from the store.
    history = await plain.client.messages(room_id)
    old = {e["event_id"]: e for e in history if e["event_id"] in (out_before, in_before)}
    decrypted_message(
        old.get(out_before), "before the restart, from the plain client", plain.user_id
    )
    decrypted_message(old.get(in_before), "before the restart, from nio", peer.user_id)

    # New messages, both ways.
    out_after = await plain.send_text(room_id, "after the restart, from the plain client")
    [seen] = await peer.wait_for_bodies(room_id, ["after the restart, from the plain client"])
    assert (seen.event_id, seen.encrypted) == (out_after, True)
    in_after = await peer.send_text(room_id, "after the restart, from nio")
    got = await plain.wait_for_event(room_id, in_after)
    decrypted_message(got, "after the restart, from nio", peer.user_id)

    # Still one device, with the keys it had: the restart neither logged in again nor
    # uploaded new device keys.
    nio_view = await peer.query_devices(plain.user_id)
    assert set(nio_view) == {plain.device_id}, sorted(nio_view)
    assert nio_view[plain.device_id].keys == device_keys
    after = await own_devices(synapse, plain)
    assert after == server_view, f"{show(server_view)} -> {show(after)}"

    raw = await synapse.room_messages(peer.access_token, room_id)
    assert [e["event_id"] for e in assert_ciphertext_only(raw)] == [
        in_after,
        out_after,
        in_before,
        out_before,
    ]
    assert peer.undecryptable(room_id) == []


async def send_txn(plain: Plain, room_id: str, i: int) -> str:
    return await plain.send_text(room_id, f"burst message {i}", txn=f"t{i}")


async def burst_until_killed(
    plain: Plain, room_id: str, proxy: ProxyProcess, kill_batch: int, kill_after_s: float | None
) -> tuple[dict[int, str], int]:
    """Send t0..t29 AT_ONCE at a time and SIGKILL the proxy during batch `kill_batch`:
    `kill_after_s` seconds after it went out, or (None) as soon as its first send is answered,
    its other sends still in flight. Returns the event ids answered before the kill (by txn
    number) and how many sends of the batch failed."""
    answered: dict[int, str] = {}
    for start in range(0, BURST, AT_ONCE):
        batch = {
            asyncio.create_task(send_txn(plain, room_id, i)): i
            for i in range(start, min(start + AT_ONCE, BURST))
        }
        killing = start // AT_ONCE == kill_batch
        if killing:
            if kill_after_s is None:
                await asyncio.wait(batch, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(kill_after_s)
            proxy.kill()
        await asyncio.wait(batch)
        answered.update({i: t.result() for t, i in batch.items() if t.exception() is None})
        if killing:
            return answered, sum(1 for t in batch if t.exception() is not None)
    raise AssertionError("the burst ended before the proxy was killed")


@pytest.mark.parametrize(
    ("warm_up", "kill_batch", "kill_after_s"),
    [
        # The room key already shared: the sends race each other and the kill lands between
        # "ciphertext stored for the txn", "sent to the server" and "answer stored".
        pytest.param(True, 4, None, id="mid-burst"),
        # The very first sends of the room: the kill lands during the room key share or the
        # first encrypted PUTs (whichever it hits, nothing may be lost or doubled).
        pytest.param(False, 0, 0.03, id="first-share"),
    ],
)
async def test_sigkill_then_client_retries_same_txns(
    session: aiohttp.ClientSession,
    proxy_process: ProxyProcess,
    synapse: SynapseServer,
    nio_peers: PeerFactory,
    localpart: str,
    warm_up: bool,
    kill_batch: int,
    kill_after_s: float | None,
) -> None:
    plain, peer, room_id = await plain_with_peer_room(
        session, proxy_process.url, synapse, nio_peers, localpart, name="restarts"
    )
    earlier: list[str] = []
    if warm_up:
        earlier.append(await plain.send_text(room_id, "warm-up"))
        await peer.wait_for_bodies(room_id, ["warm-up"])
    device_keys = (await peer.query_devices(plain.user_id))[plain.device_id].keys
    server_view = await own_devices(synapse, plain)

    answered, failed = await burst_until_killed(
        plain, room_id, proxy_process, kill_batch, kill_after_s
    )
    raw = await synapse.room_messages(peer.access_token, room_id)
    reached = len(assert_ciphertext_only(raw)) - len(earlier)
    print(f"killed: {len(answered)} answered, {failed} failed, {reached} on the server")
    proxy_process.start(timeout=RESTART_AFTER_KILL_S)

    # The client retries every txn, the same ids with the same contents.
    retried: dict[int, str] = {}
    for start in range(0, BURST, AT_ONCE):
        numbers = range(start, min(start + AT_ONCE, BURST))
        ids = await asyncio.gather(*(send_txn(plain, room_id, i) for i in numbers))
        retried.update(zip(numbers, ids, strict=True))
    changed = {i: (answered[i], retried[i]) for i in answered if answered[i] != retried[i]}
    assert not changed, f"a retried txn got another event id: {changed}"
    assert len(set(retried.values())) == BURST, f"txns share event ids: {retried}"

    expected = (["warm-up"] if warm_up else []) + [f"burst message {i}" for i in range(BURST)]
    await peer.wait_for_bodies(room_id, expected, timeout=20)
    await peer.sync_once(timeout_ms=0)  # a duplicate sent last would show up here
    counts = Counter(peer.bodies(room_id))
    assert {b: n for b, n in counts.items() if n != 1} == {}, f"duplicates: {counts}"
    assert set(counts) == set(expected), f"unexpected bodies: {sorted(counts)}"
    by_body = {m.body: m.event_id for m in peer.messages(room_id)}
    assert {i: by_body[f"burst message {i}"] for i in range(BURST)} == retried
    assert all(m.encrypted for m in peer.messages(room_id))
    assert peer.undecryptable(room_id) == []

    # On the server: each message once, all ciphertext.
    raw = await synapse.room_messages(peer.access_token, room_id)
    on_server = [e["event_id"] for e in assert_ciphertext_only(raw)]
    assert sorted(on_server) == sorted([*earlier, *retried.values()])

    # Through the proxy the client reads each of them decrypted, once.
    history = await plain.client.messages(room_id, limit=100)
    assert "m.room.encrypted" not in {e["type"] for e in history}, show(history)
    assert Counter(bodies_of(history)) == Counter(expected)

    # The crash made no new device and replaced no keys.
    nio_view = await peer.query_devices(plain.user_id)
    assert set(nio_view) == {plain.device_id}, sorted(nio_view)
    assert nio_view[plain.device_id].keys == device_keys
    assert await own_devices(synapse, plain) == server_view
