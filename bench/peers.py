"""Pass-through side by side: e2eproxy against direct and against pantalaimon 0.10.5 (from PyPI,
in its own virtualenv: bench/fleet.py), against another checkout of e2eproxy when
BENCH_BASELINE_REPO names one (before/after in one run), and e2eproxy's throughput with 1, 2
and 4 instances.

Throughput: CONCURRENCY clients, each with its own access token, loop GET /account/whoami for a
few seconds; with several instances each client goes to the instance its token hashes to, as a
load balancer hashing on the token would send it. Every variant runs once per round, interleaved
(the order flipped every other round). The load generator and the stub homeserver share one
process, and every proxy process shares the same cores with them: on a 2-core machine a second
instance has no core of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp

from bench.common import V3, ProxyProcess, Row, auth, interleave, median
from bench.env import Env
from bench.fleet import PantalaimonProcess, pantalaimon_binary

CONCURRENCY = 50
THROUGHPUT_TARGET = 0.95
INSTANCES = (1, 2, 4)
CORES_NOTE = "load generator, stub and proxies share the machine's cores"


@contextlib.asynccontextmanager
async def pantalaimon(env: Env, homeserver: str, data_dir: Path) -> AsyncIterator[str | None]:
    """pantalaimon in front of `homeserver`: its URL, or None (not asked for, or not
    installable here: the reason goes into the results)."""
    if not env.state.get("with_pantalaimon", True):
        yield None
        return
    binary, why = pantalaimon_binary()
    if binary is None:
        print(f"  pantalaimon: {why}; e2eproxy alone", flush=True)
        env.report.extra["pantalaimon"] = why
        yield None
        return
    process = PantalaimonProcess(binary, homeserver, data_dir)
    await process.start()
    try:
        yield process.url
    finally:
        await process.stop()


@contextlib.asynccontextmanager
async def baseline(homeserver: str, data_dir: Path) -> AsyncIterator[str | None]:
    """With BENCH_BASELINE_REPO=/path/to/checkout (another version, e.g. before a change): that
    checkout's proxy in front of `homeserver`, timed in the same rounds; its URL, else None."""
    repo = os.environ.get("BENCH_BASELINE_REPO")
    if not repo:
        yield None
        return
    process = ProxyProcess(homeserver, data_dir, repo=repo)
    await process.start()
    try:
        yield process.url
    finally:
        await process.stop()


@contextlib.asynccontextmanager
async def more_instances(homeserver: str, tmp: Path, count: int) -> AsyncIterator[list[str]]:
    """`count` more e2eproxy processes in front of `homeserver`, each on its own port with its
    own data dir (a pass-through never touches the store); their URLs."""
    processes = [ProxyProcess(homeserver, tmp / f"proxy-instance-{n}") for n in range(count)]
    try:
        for process in processes:
            await process.start()
        yield [process.url for process in processes]
    finally:
        for process in processes:
            await process.stop()


def balanced(bases: list[str], tokens: list[str]) -> list[str]:
    """The instance each token's client reaches: a stable hash of the token, modulo."""
    return [bases[int(hashlib.sha256(t.encode()).hexdigest(), 16) % len(bases)] for t in tokens]


async def rate(http: aiohttp.ClientSession, bases: list[str], tokens: list[str],
               seconds: float) -> float:
    """requests/s of one client per token, each looping GET /account/whoami at its base."""
    done = 0
    stop = time.perf_counter() + seconds

    async def client(base: str, token: str) -> None:
        nonlocal done
        url, headers = f"{base}{V3}/account/whoami", auth(token)
        while time.perf_counter() < stop:
            async with http.get(url, headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status
            done += 1

    began = time.perf_counter()
    await asyncio.gather(*(client(b, t) for b, t in zip(bases, tokens, strict=True)))
    return done / (time.perf_counter() - began)


async def throughput(env: Env, workload: str, tokens: list[str], variants: dict[str, list[str]],
                     seconds: float, rounds: int, after_round: Callable[[], None] | None = None
                     ) -> None:
    """Rows of requests/s for each variant (name: the bases its clients spread over) against
    "direct", which must be one of them."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        def one(bases: list[str]) -> Callable[[], Awaitable[float]]:
            spread = balanced(bases, tokens)

            async def run() -> float:
                value = await rate(http, spread, tokens, seconds)
                if after_round is not None:
                    after_round()
                return value
            return run

        samples = await interleave({name: one(bases) for name, bases in variants.items()},
                                   rounds)
    direct = median(samples["direct"])
    proxy = median(samples["proxy"])
    for name, values in samples.items():
        if name == "direct":
            continue
        value = median(values)
        primary = name == "proxy"
        label = {"proxy": "via proxy", "pantalaimon": "via pantalaimon",
                 "before": "via baseline"}.get(
            name, f"{name.removeprefix('x')} proxy instances")
        baseline = f"direct {direct:.0f} req/s"
        if name in ("pantalaimon", "before"):
            baseline += f"; e2eproxy {proxy / value:.2f}x"
        env.report.add(Row(
            workload, f"requests/s, {CONCURRENCY} clients, {label}", value, min(values), "req/s",
            baseline, value / direct,
            f">= {THROUGHPUT_TARGET:.0%} of direct" if primary else None,
            value / direct >= THROUGHPUT_TARGET if primary else None,
            samples=len(values), note=f"p90 column: the slowest round; {CORES_NOTE}"))
