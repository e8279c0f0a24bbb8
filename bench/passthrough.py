"""Workload 1, pass-through: added latency of a small GET, /sync long-poll wake-up, and requests
per second with 50 concurrent clients, through the proxy versus direct to the homeserver and
versus pantalaimon (bench/peers.py), and with 1, 2 and 4 proxy instances."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from bench import peers
from bench.common import V3, Row, auth, interleave, median, timed_request
from bench.env import Env, compare
from bench.floors import floor_server

ADDED_TARGET_MS = 0.2


PEERS = {"pantalaimon": "via pantalaimon", "before": "via baseline"}
FLOORS = {
    "splice": "floor (TCP splice)",
    "relay": "floor (bare stack)",
}


async def small_gets(env: Env, workload: str, token: str, rounds: int,
                     others: dict[str, str | None] | None = None) -> None:
    """Sequential small GETs through the proxy, direct, and through `others` (name: URL, None
    for one not running): "pantalaimon", "before" (bench/peers.py) and the floor servers
    (bench/floors.py), interleaved; what each adds over direct."""
    assert env.http is not None
    http = env.http
    for label, path, headers in (
        ("GET /versions", "/_matrix/client/versions", {}),
        ("GET /account/whoami", f"{V3}/account/whoami", auth(token)),
    ):
        def one(base: str, path: str = path, headers: dict[str, str] = headers) -> Any:
            async def run() -> float:
                elapsed, status, _ = await timed_request(http, "GET", base + path,
                                                         headers=headers)
                assert status == 200, status
                return elapsed
            return run
        running = {name: url for name, url in (others or {}).items() if url is not None}
        samples = await interleave(
            {"proxy": one(env.proxied), "direct": one(env.direct)}
            | {name: one(url) for name, url in running.items()}, rounds, warmup=20)
        endpoint = label.split()[1]
        ours, _ = compare(env, workload, f"{label} via proxy", samples["proxy"],
                          samples["direct"], "direct", added_name=f"  added per {endpoint}",
                          target=f"<= {ADDED_TARGET_MS} ms",
                          check=lambda added, _: added <= ADDED_TARGET_MS)
        direct = median(samples["direct"]) * 1000
        for name in running:
            theirs = median(samples[name]) * 1000 - direct
            if name in PEERS:
                compare(env, workload, f"{label} {PEERS[name]}", samples[name],
                        samples["direct"], "direct")
                what, note = f"{name} added", "ratio: e2eproxy's added latency over this"
            else:
                what, note = FLOORS[name], "what any proxy process adds here (bench/floors.py)"
            env.report.add(Row(workload, f"  {what} per {endpoint}", theirs, None, "ms",
                               f"e2eproxy {ours:.3f} ms", ours / theirs if theirs > 0 else None,
                               note=note))


async def sync_wakeup(env: Env, workload: str, token: str, room_id: str, sender: str,
                      send: Callable[[str, str], Any], rounds: int) -> None:
    """A /sync parked in long-poll, woken by a new event: time from the send to the answer."""
    assert env.http is not None
    http = env.http
    since: dict[str, str] = {}
    flt = json.dumps({"room": {"timeline": {"limit": 5}}, "presence": {"not_types": ["*"]}})

    def one(base: str) -> Any:
        async def run() -> float:
            # Catch up first (the other variant's event is news to this stream), untimed.
            params = {"filter": flt, "timeout": "0"}
            if base in since:
                params["since"] = since[base]
            since[base] = (await _read_sync(http, base, params, token))["next_batch"]
            params = {"filter": flt, "timeout": "30000", "since": since[base]}
            task = asyncio.ensure_future(_read_sync(http, base, params, token))
            await asyncio.sleep(0.03)  # parked upstream by now
            assert not task.done(), "the long-poll returned before the event was sent"
            began = time.perf_counter()
            await send(room_id, sender)
            body = await task
            elapsed = time.perf_counter() - began
            since[base] = body["next_batch"]
            assert body.get("rooms", {}).get("join"), "woke without the event"
            return elapsed
        return run

    samples = await interleave({"proxy": one(env.proxied), "direct": one(env.direct)}, rounds)
    compare(env, workload, "/sync wake-up via proxy", samples["proxy"], samples["direct"],
            "direct", added_name="  added per /sync wake-up",
            target="(informative)")


async def _read_sync(http: aiohttp.ClientSession, base: str, params: dict[str, str],
                     token: str) -> dict[str, Any]:
    async with http.get(f"{base}{V3}/sync", params=params, headers=auth(token)) as response:
        assert response.status == 200, response.status
        return await response.json()


async def run(env: Env) -> None:
    assert env.stub is not None and env.stub.base_url is not None
    stub = env.stub
    me = await env.user_through_proxy("passthrough")
    token = me["access_token"]
    other = stub.register("pt-other", "pw")
    room_id = stub.create_room(other, preset="public_chat", invite=[me["user_id"]])
    stub.room_ops.join(stub.room(room_id), me["user_id"])
    # One token per load client (devices the proxy never saw: pure pass-through).
    stub.register("pt-load", "pw")
    tokens = [stub.login("pt-load", "pw").access_token for _ in range(peers.CONCURRENCY)]

    async def send(room: str, sender: str) -> None:
        stub.room_ops.send(stub.room(room), sender, "m.room.message",
                           {"msgtype": "m.text", "body": "wake up"})

    rounds = 150 if env.quick else 800
    stub_port = int(stub.base_url.rsplit(":", 1)[1])
    async with peers.pantalaimon(env, stub.base_url, env.tmp / "pantalaimon-stub") as pan, \
            peers.baseline(stub.base_url, env.tmp / "proxy-baseline") as before:
        async with floor_server("splice", stub_port) as splice, \
                floor_server("relay", stub_port) as relay:
            await small_gets(env, "passthrough", token, rounds, {
                "pantalaimon": pan, "before": before, "splice": splice, "relay": relay})
        await sync_wakeup(env, "passthrough", token, room_id, other, send, 8 if env.quick else 30)
        extra = max(peers.INSTANCES) - 1
        async with peers.more_instances(stub.base_url, env.tmp, extra) as more:
            instances = [env.proxied, *more]
            variants = {"direct": [env.direct], "proxy": [env.proxied]}
            variants |= {f"x{n}": instances[:n] for n in peers.INSTANCES if n > 1}
            variants |= {name: [url] for name, url in (("pantalaimon", pan), ("before", before))
                         if url is not None}
            await peers.throughput(env, "passthrough", tokens, variants,
                                   1.0 if env.quick else 2.5, 2 if env.quick else 4,
                                   after_round=stub.requests.clear)
    stub.requests.clear()
    env.record_memory("passthrough")
