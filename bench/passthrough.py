"""Workload 1, pass-through: added latency of a small GET, /sync long-poll wake-up, and requests
per second with 50 concurrent clients, through the proxy versus direct to the homeserver."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from bench.common import V3, Row, auth, interleave, median, timed_request
from bench.env import Env, compare

CONCURRENCY = 50
ADDED_TARGET_MS = 0.2
THROUGHPUT_TARGET = 0.95


async def small_gets(env: Env, workload: str, token: str, rounds: int) -> None:
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
        samples = await interleave({"proxy": one(env.proxied), "direct": one(env.direct)},
                                   rounds, warmup=20)
        compare(env, workload, f"{label} via proxy", samples["proxy"], samples["direct"],
                "direct", added_name=f"  added per {label.split()[1]}",
                target=f"<= {ADDED_TARGET_MS} ms", check=lambda added, _: added <= ADDED_TARGET_MS)


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


async def throughput(env: Env, workload: str, token: str, seconds: float, rounds: int) -> None:
    """requests/s with CONCURRENCY clients each looping GET /account/whoami."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        def one(base: str) -> Any:
            async def run() -> float:
                done = 0
                url = f"{base}{V3}/account/whoami"
                headers = auth(token)
                stop = time.perf_counter() + seconds

                async def client() -> None:
                    nonlocal done
                    while time.perf_counter() < stop:
                        async with http.get(url, headers=headers) as response:
                            await response.read()
                            assert response.status == 200
                        done += 1

                began = time.perf_counter()
                await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
                if env.stub is not None:
                    env.stub.requests.clear()
                return done / (time.perf_counter() - began)
            return run

        samples = await interleave({"proxy": one(env.proxied), "direct": one(env.direct)},
                                   rounds)
    proxy, direct = median(samples["proxy"]), median(samples["direct"])
    env.report.add(Row(workload, f"requests/s, {CONCURRENCY} clients, via proxy", proxy,
                       min(samples["proxy"]), "req/s", f"direct {direct:.0f} req/s",
                       proxy / direct, f">= {THROUGHPUT_TARGET:.0%} of direct",
                       proxy / direct >= THROUGHPUT_TARGET, samples=len(samples["proxy"]),
                       note="p90 column: the slowest round"))


async def run(env: Env) -> None:
    assert env.stub is not None
    stub = env.stub
    me = await env.user_through_proxy("passthrough")
    token = me["access_token"]
    other = stub.register("pt-other", "pw")
    room_id = stub.create_room(other, preset="public_chat", invite=[me["user_id"]])
    stub.room_ops.join(stub.room(room_id), me["user_id"])

    async def send(room: str, sender: str) -> None:
        stub.room_ops.send(stub.room(room), sender, "m.room.message",
                           {"msgtype": "m.text", "body": "wake up"})

    rounds = 150 if env.quick else 800
    await small_gets(env, "passthrough", token, rounds)
    await sync_wakeup(env, "passthrough", token, room_id, other, send, 8 if env.quick else 30)
    await throughput(env, "passthrough", token, 1.0 if env.quick else 2.5, 2 if env.quick else 4)
    stub.requests.clear()
    env.record_memory("passthrough")
