"""Operations against the stub homeserver: /metrics after real traffic (a login, an encrypted
room, a send and its key share, a decryption and a failed one) has every counter moved and names
no user, room, device or token; /health follows the store and the homeserver; the lease
counters move on a loss, a handover and an adoption; and `e2eproxy run` serves it all on the
[metrics] listener, answers `ctl health`, and logs JSON lines when told to."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from e2eproxy.config import EncryptionConfig
from e2eproxy.monitoring.health import STORE, HealthChecker, homeserver_check
from e2eproxy.monitoring.listener import create_metrics_app
from e2eproxy.monitoring.metrics import Metrics
from e2eproxy.proxy.app_keys import METRICS, REGISTRY, SERVER, UPSTREAM
from e2eproxy.proxy.lease_keeper import adopt_round, renew_round
from e2eproxy.store import SqliteStore
from e2eproxy.store.memory import MemoryBackend
from e2eproxy.store.records import RecordStore
from e2eproxy.store.txn import LeaseRow, Txn
from tests.integration.conftest import RunningProxy, StartE2EEProxy, proxied
from tests.support.plain_client import (
    PlainClient,
    encrypted_room_of,
    login_all,
    third_party_encrypted_event,
)
from tests.support.processes import ProxyProcess, free_port, run_cli
from tests.support.stub_homeserver import StubHomeserver
from tests.support.timing import ManualTimer, until

# Routes are labelled by their pattern, the API version left out.
CLIENT = "/_matrix/client/{version}"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ServeMetrics = Callable[..., Awaitable[tuple[str, HealthChecker]]]


@pytest.fixture
async def serve_metrics() -> AsyncIterator[ServeMetrics]:
    """`await serve_metrics(proxy, timer)`: the metrics listener's app for a proxy of
    start_e2ee_proxy (its metrics, its store, its homeserver) on an ephemeral port; its URL
    and its health checker."""
    started: list[tuple[TestServer, HealthChecker]] = []

    async def serve(proxy: RunningProxy, timer: ManualTimer | None = None
                    ) -> tuple[str, HealthChecker]:
        app = app_of(proxy)
        checker = HealthChecker([app[SERVER].name], timer or ManualTimer())
        checker.store = proxy.store
        checker.add_upstream(app[SERVER].name, app[UPSTREAM])
        server = TestServer(create_metrics_app(app[METRICS], checker), host="127.0.0.1")
        await server.start_server()
        started.append((server, checker))
        return str(server.make_url("")).rstrip("/"), checker

    yield serve
    for server, checker in started:
        await checker.close()
        await server.close()


def app_of(proxy: RunningProxy) -> Any:
    assert proxy.server.app is not None
    return proxy.server.app


async def scrape(session: aiohttp.ClientSession, url: str) -> tuple[str, Samples]:
    async with session.get(url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for name, labels, value, *_ in family.samples:
            found[(name, frozenset(labels.items()))] = value
    return text, found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests(samples: Samples, route: str, status: str = "200", server: str = "test") -> float:
    """Requests of one route and status to a listener (start_e2ee_proxy's by default)."""
    return value(samples, "e2eproxy_requests_total", server=server, route=route, status=status)


async def test_metrics_move_with_real_traffic_and_name_nobody(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
    serve_metrics: ServeMetrics,
) -> None:
    proxy, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob",
                                        encryption=EncryptionConfig(missing_key_wait=0.2))
    url, _ = await serve_metrics(proxy)
    _, before = await scrape(session, url)
    assert requests(before, CLIENT + "/login") == 2
    assert value(before, "e2eproxy_accounts_held", server="test") == 2
    assert value(before, "e2eproxy_room_key_shares_total") == 0

    room_id = await encrypted_room_of(alice, bob)
    event_id = await alice.send(room_id, {"msgtype": "m.text", "body": "counted, not named"})
    await bob.wait_for_event(room_id, event_id)
    lost = third_party_encrypted_event(stub, room_id)
    assert (await bob.wait_for_event(room_id, lost))["content"]["msgtype"] == "m.notice"
    await bob.messages(room_id)
    # Each sync applied restarts the account's lag.
    [bobs] = [a for a in app_of(proxy)[REGISTRY].accounts.values() if a.user_id == bob.user_id]
    bobs.synced_at = -1.0
    await bob.sync()
    assert bobs.synced_at >= 0
    text, after = await scrape(session, url)

    assert requests(after, CLIENT + "/rooms/{room}/send/{type}/{txn}") == 1
    assert requests(after, CLIENT + "/rooms/{room}/messages") == 1
    assert requests(after, CLIENT + "/sync") >= 2
    # createRoom is one of the proxy's; invite and join are too (membership).
    assert requests(after, CLIENT + "/createRoom") == 1
    # Bob's device got the room key, over Olm, in one share; he read the message (in his
    # sync and in /messages) and failed Carol's for want of its key, at least once each.
    assert value(after, "e2eproxy_room_key_shares_total") == 1
    assert value(after, "e2eproxy_room_key_share_devices_total") == 1
    assert value(after, "e2eproxy_to_device_sent_total", type="m.room.encrypted") >= 1
    assert value(after, "e2eproxy_to_device_received_total", type="m.room_key") == 1
    assert value(after, "e2eproxy_decrypted_events_total") >= 2
    assert value(after, "e2eproxy_decryption_failures_total", cause="missing_session") >= 1
    commits = value(after, "e2eproxy_store_commit_seconds_count", backend="memory")
    assert commits > value(before, "e2eproxy_store_commit_seconds_count", backend="memory")
    assert value(after, "e2eproxy_background_sync_lag_seconds_bucket", le="+Inf") == 2
    assert ("e2eproxy_background_sync_lag_max_seconds", frozenset()) in after
    # No user, device, room, event or token in any label or value.
    named = [alice.user_id, bob.user_id, alice.device_id, bob.device_id, room_id, event_id,
             lost, alice.access_token, bob.access_token, "alice", "bob", "carol"]
    assert [name for name in named if name and name in text] == []


async def test_an_unmatched_request_is_one_bounded_route(
    session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy, serve_metrics: ServeMetrics,
) -> None:
    proxy = await start_e2ee_proxy()
    url, _ = await serve_metrics(proxy)
    for path in ("/nothing/@alice:x", "/other/!room:x", "/nothing/else"):
        async with session.get(proxy.url + path) as response:
            assert response.status == 404
    text, samples = await scrape(session, url)
    assert requests(samples, "unmatched", "404") == 3
    # The router makes a route object for each unmatched request: they are one series, and
    # the counter holds one entry for them, not one each.
    assert len(app_of(proxy)[METRICS].requests) == 1
    assert "@alice:x" not in text and "!room:x" not in text


async def test_health_follows_the_homeserver(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
    serve_metrics: ServeMetrics,
) -> None:
    timer = ManualTimer()
    url, _ = await serve_metrics(await start_e2ee_proxy(), timer)
    homeserver = homeserver_check("test")

    async def health() -> tuple[int, Any]:
        async with session.get(url + "/health") as response:
            return response.status, await response.json()

    assert await health() == (200, {"status": "ready", "checks": {STORE: "ok", homeserver: "ok"}})
    down = stub.faults.add(r"^/_matrix/client/versions$", drop=True)
    assert (await health())[0] == 200, "a probe within the period reuses the last check"
    timer.advance(5.0)
    status, body = await health()
    assert status == 503
    assert body["status"] == "unavailable" and body["checks"][STORE] == "ok"
    assert body["checks"][homeserver].startswith("Cannot reach the homeserver")
    stub.faults.remove(down)
    stub.faults.add(r"^/_matrix/client/versions$", status=502, times=1)
    timer.advance(5.0)
    status, body = await health()
    assert (status, body["checks"][homeserver]) == (
        503, "the homeserver answered GET /_matrix/client/versions with 502")
    timer.advance(5.0)
    assert (await health())[0] == 200
    checks = len(stub.requests_to(r"^/_matrix/client/versions$"))
    for _ in range(5):
        assert (await health())[0] == 200
    assert len(stub.requests_to(r"^/_matrix/client/versions$")) == checks
    async with session.get(url + "/health/live") as response:
        assert (response.status, await response.json()) == (200, {"status": "live"})


async def test_health_fails_when_the_store_does(
    session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy, serve_metrics: ServeMetrics,
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "store", passphrase="ops", use_keyring=False, scrypt_n=2**10)
    await store.open()
    timer = ManualTimer()
    url, _ = await serve_metrics(await start_e2ee_proxy(store=store), timer)
    async with session.get(url + "/health") as response:
        assert response.status == 200
    await store.close()  # the database went away
    timer.advance(5.0)
    async with session.get(url + "/health") as response:
        assert response.status == 503
        checks = (await response.json())["checks"]
    assert checks == {STORE: "StoreError: the store is not open", homeserver_check("test"): "ok"}


async def test_lease_counters_move_on_loss_handover_and_adoption(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
) -> None:
    shared = MemoryBackend()
    first = await start_e2ee_proxy(store=RecordStore(shared, holder="instance-1"))
    second = await start_e2ee_proxy(store=RecordStore(shared, holder="instance-2"))
    alice, bob, carol = await login_all(session, first.url, stub, "alice", "bob", "carol")
    registry = app_of(first)[REGISTRY]
    metrics: Metrics = app_of(first)[METRICS]

    def steal(txn: Txn) -> None:  # another process drove Alice meanwhile
        [key] = [k for k in registry.accounts if k.user_id == alice.user_id]
        row = txn.lease_get(key)
        assert row is not None
        txn.lease_put(key, LeaseRow("intruder", row.expires_ms, row.generation + 1))

    await shared.run(steal)
    await renew_round(registry)
    assert metrics.registry.get_sample_value("e2eproxy_lease_losses_total") == 1

    # Bob's client reaches the second instance, which asks for his lease: handed over.
    moved = PlainClient(session, second.url, bob.access_token)
    asking = asyncio.ensure_future(app_of(second)[REGISTRY].resolve(moved.access_token))
    await until("the second instance asked for Bob", lambda: _wanted(registry, bob.user_id))
    await renew_round(registry)
    await asking
    assert metrics.registry.get_sample_value("e2eproxy_lease_handovers_total") == 1

    # The first instance stops: the second adopts Carol (Alice's lease is the intruder's).
    await first.stop()
    adopting: Metrics = app_of(second)[METRICS]
    await adopt_round(app_of(second)[REGISTRY])
    assert adopting.registry.get_sample_value("e2eproxy_lease_adoptions_total") == 1
    assert adopting.registry.get_sample_value("e2eproxy_accounts_held", {"server": "test"}) == 2
    assert carol.user_id in {a.user_id for a in app_of(second)[REGISTRY].accounts.values()}


async def _wanted(registry: Any, user_id: str) -> bool:
    [account] = [a for a in registry.accounts.values() if a.user_id == user_id]
    lease = (await registry.store.renew_leases([account.key]))[account.key]
    return bool(lease and lease.wanted)


async def test_run_serves_metrics_and_health_on_their_own_listener(
    stub: StubHomeserver, session: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    assert stub.base_url is not None
    metrics_port = free_port()
    config = tmp_path / "e2eproxy.toml"
    config.write_text(f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n[log]\nformat = "json"\n')
    data = tmp_path / "data"
    proxy = ProxyProcess(stub.base_url, free_port(), data, config=config)
    try:
        await asyncio.to_thread(proxy.start)  # the stub answers meanwhile, on this loop
        (alice,) = await login_all(session, proxy.url, stub, "alice")
        url = f"http://127.0.0.1:{metrics_port}"
        text, samples = await scrape(session, url)
        assert requests(samples, CLIENT + "/login", server="default") == 1
        assert value(samples, "e2eproxy_accounts_held", server="default") == 1
        assert "process_resident_memory_bytes" in text  # the process's own, once
        assert alice.user_id not in text and alice.access_token not in text
        async with session.get(url + "/health") as response:
            assert response.status == 200, await response.text()
        done = await asyncio.to_thread(run_cli, "ctl", "--data-dir", str(data), "health",
                                       timeout=60)
        assert (done.returncode, done.stdout.splitlines()[0]) == (0, "e2eproxy is ready")
        # Not on the Matrix listener: that one passes /metrics to the homeserver.
        async with session.get(proxy.url + "/metrics") as response:
            assert "e2eproxy_requests_total" not in await response.text()
        assert await asyncio.to_thread(proxy.terminate, 20) == 0, proxy.tail()
    finally:
        proxy.stop()
    logged = [json.loads(line) for line in proxy.lines if not line.startswith("--- start")]
    assert any(entry["message"].startswith("Metrics and health probes on") for entry in logged)
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in logged)
    assert alice.access_token not in "".join(proxy.lines)
