"""Workload ``accounts`` (issue 18): a fleet of idle accounts behind one proxy.

N accounts log in through the proxy one after the other (the latency one bot sees; at 4 at a
time the homeserver's queue, the same for both proxies, dominates), then sit idle:
no client syncs, only the proxy's own background sync keeps their keys current. Measured on the
proxy's process: login p50/p95; CPU (utime + stime from /proc/PID/stat) over an idle window, per
minute and per 100 accounts; RSS growth per account; the homeserver's count of /sync requests
received over the window (background-sync rounds); file write calls per round (syscw from
/proc/PID/io: SQLite's writes; socket sends are not counted there); and, after a restart on the
same store, the seconds from spawn until every account has a sync at the homeserver again.

On a real Synapse (counting its /sync requests through its metrics) with e2eproxy and
pantalaimon 0.10.5 side by side, each with users of its own; against the stub homeserver (in
this process) for a larger N, e2eproxy alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from bench.common import Row, median
from bench.env import Env
from bench.fleet import (
    CountingSynapse,
    FleetProxy,
    PantalaimonProcess,
    cpu_seconds,
    login_all,
    pantalaimon_binary,
    rss_kib,
    until,
    write_calls,
)
from tests.support.stub_homeserver import StubHomeserver, running_stub

PASSWORD = "fleet-pw"
LOGIN_CONCURRENCY = 1
DIRECT_LOGINS = 50
# Longer than one long-poll (30 s): every account has finished its first rounds and is parked.
SETTLE_S = 40.0
RESTORE_TIMEOUT_S = 300.0
CPU_TARGET = 0.35  # s per minute per 100 accounts (half of pantalaimon's 0.72)
RSS_TARGET_KB = 60.0
LOGIN_TARGET_MS = 100.0
RESTORE_TARGET_S = 10.0


class Proxy(Protocol):
    url: str

    async def start(self, timeout: float = ...) -> float: ...

    async def stop(self) -> None: ...


@dataclass
class Fleet:
    """What one proxy did with one fleet."""

    proxy: str
    homeserver: str
    accounts: int
    logins: list[float]
    cpu_per_min_100: float
    rss_per_account_kb: float
    rounds_per_min_100: float
    writes_per_round: float
    restored_s: float | None


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def pid_of(proxy: Any) -> int:
    return int(proxy.proc.pid)


async def measure(name: str, homeserver: str, proxy: Proxy, http: aiohttp.ClientSession,
                  users: list[str], syncs: Callable[[], Awaitable[int]],
                  idle_s: float, after_logins: Callable[[], None] | None = None) -> Fleet:
    """Log `users` in through `proxy`, let them idle, restart it; see the module docstring."""
    began = time.perf_counter()
    await proxy.start(timeout=RESTORE_TIMEOUT_S)
    rss_before = rss_kib(pid_of(proxy))
    first = await syncs()
    logins = await login_all(http, proxy.url, users, PASSWORD, LOGIN_CONCURRENCY)
    if after_logins is not None:
        after_logins()

    async def all_synced() -> bool:
        return await syncs() >= first + len(users)

    await until(all_synced, RESTORE_TIMEOUT_S)
    print(f"  {name}: {len(users)} logins and first syncs in {time.perf_counter() - began:.0f} s;"
          f" settling {SETTLE_S:.0f} s, idle {idle_s:.0f} s", flush=True)
    await asyncio.sleep(SETTLE_S)
    pid = pid_of(proxy)
    rss_after = rss_kib(pid)
    cpu0, writes0, syncs0, t0 = cpu_seconds(pid), write_calls(pid), await syncs(), time.time()
    await asyncio.sleep(idle_s)
    cpu1, writes1, syncs1, t1 = cpu_seconds(pid), write_calls(pid), await syncs(), time.time()
    minutes, hundreds = (t1 - t0) / 60, len(users) / 100
    rounds = syncs1 - syncs0
    await proxy.stop()
    restored = await restart(proxy, syncs, len(users))
    await proxy.stop()
    return Fleet(
        name, homeserver, len(users), logins,
        (cpu1 - cpu0) / minutes / hundreds,
        (rss_after - rss_before) * 1.024 / len(users),
        rounds / minutes / hundreds,
        (writes1 - writes0) / rounds if rounds else float("nan"),
        restored,
    )


async def restart(proxy: Proxy, syncs: Callable[[], Awaitable[int]], accounts: int
                  ) -> float | None:
    """Seconds from spawn on the same store until every account has asked for a /sync."""
    before = await syncs()
    began = time.perf_counter()
    await proxy.start(timeout=RESTORE_TIMEOUT_S)

    async def all_syncing() -> bool:
        return await syncs() >= before + accounts

    left = RESTORE_TIMEOUT_S - (time.perf_counter() - began)
    waited = await until(all_syncing, left)
    return None if waited is None else time.perf_counter() - began


def report(env: Env, fleet: Fleet, base: Fleet | None) -> None:
    where = f"{fleet.accounts} accounts, {fleet.proxy} ({fleet.homeserver})"
    primary = fleet.proxy == "e2eproxy"

    def vs(value: float, other: float | None, unit: str) -> tuple[str | None, float | None]:
        if other is None:
            return None, None
        return f"{base.proxy if base else ''} {other:.3g} {unit}", value / other if other else None

    p50 = median(fleet.logins) * 1000
    p95 = pct(fleet.logins, 0.95) * 1000
    label, ratio = vs(p50, median(base.logins) * 1000 if base else None, "ms")
    env.report.add(Row("accounts", f"login p50, {where}", p50, p95, "ms", label, ratio,
                       f"<= {LOGIN_TARGET_MS:.0f} ms" if primary else None,
                       p50 <= LOGIN_TARGET_MS if primary else None,
                       note="p90 column: p95", samples=len(fleet.logins)))
    label, ratio = vs(fleet.cpu_per_min_100, base.cpu_per_min_100 if base else None, "s")
    env.report.add(Row("accounts", f"idle CPU s/min per 100 accounts, {where}",
                       fleet.cpu_per_min_100, None, "s", label, ratio,
                       f"<= {CPU_TARGET} s" if primary else None,
                       fleet.cpu_per_min_100 <= CPU_TARGET if primary else None))
    label, ratio = vs(fleet.rss_per_account_kb, base.rss_per_account_kb if base else None, "KB")
    env.report.add(Row("accounts", f"RSS per account, {where}", fleet.rss_per_account_kb,
                       None, "KB", label, ratio,
                       f"<= {RSS_TARGET_KB:.0f} KB" if primary else None,
                       fleet.rss_per_account_kb <= RSS_TARGET_KB if primary else None))
    env.report.add(Row("accounts", f"sync rounds/min per 100 accounts, {where}",
                       fleet.rounds_per_min_100, None, "", note="counted by the homeserver"))
    env.report.add(Row("accounts", f"file writes per idle round, {where}",
                       fleet.writes_per_round, None, "", note="syscw of /proc/PID/io"))
    if fleet.restored_s is not None:
        # The target is for 1,000 accounts: a larger fleet gets as long per thousand.
        target = primary and fleet.accounts >= 1000
        limit = RESTORE_TARGET_S * fleet.accounts / 1000
        env.report.add(Row("accounts", f"restart: all syncing after, {where}",
                           fleet.restored_s, None, "s",
                           target=f"<= {limit:.0f} s" if target else None,
                           met=fleet.restored_s <= limit if target else None))
    env.report.extra.setdefault("accounts", []).append(
        {k: v for k, v in vars(fleet).items() if k != "logins"}
        | {"login_p50_ms": p50, "login_p95_ms": p95})


# -- the two homeservers ---------------------------------------------------------------------
async def on_synapse(env: Env, sizes: list[int], idle_s: float, with_pantalaimon: bool) -> None:
    synapse = CountingSynapse(env.tmp / "synapse-accounts")
    synapse.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def syncs() -> int:
                return await synapse.syncs_received(http)

            direct = [f"direct{i}" for i in range(DIRECT_LOGINS)]
            await synapse.register_many(http, direct, PASSWORD)
            logins = await login_all(http, synapse.base_url, direct, PASSWORD, LOGIN_CONCURRENCY)
            env.report.add(Row("accounts", "login p50, direct to Synapse (the homeserver's share)",
                               median(logins) * 1000, pct(logins, 0.95) * 1000, "ms",
                               note="p90 column: p95", samples=len(logins)))
            binary, why = pantalaimon_binary() if with_pantalaimon else (None, "not asked for")
            if binary is None:
                print(f"  pantalaimon: {why}; e2eproxy alone", flush=True)
                env.report.extra["pantalaimon"] = why
            for size in sizes:
                ours = [f"e2e{size}x{i}" for i in range(size)]
                theirs = [f"pan{size}x{i}" for i in range(size)] if binary else []
                await synapse.register_many(http, ours + theirs, PASSWORD)
                fleet = await measure(
                    "e2eproxy", "Synapse", FleetProxy(synapse.base_url, env.tmp / f"e2e{size}",
                                                      size), http, ours, syncs, idle_s)
                base = None
                if binary is not None:
                    pan = PantalaimonProcess(binary, synapse.base_url, env.tmp / f"pan{size}")
                    base = await measure("pantalaimon", "Synapse", pan, http, theirs, syncs,
                                         idle_s)
                report(env, fleet, base)
                if base is not None:
                    report(env, base, None)
    finally:
        synapse.stop()


class StubSyncs:
    """The stub's /sync requests so far (read incrementally: the list only grows)."""

    def __init__(self, stub: StubHomeserver) -> None:
        self.stub, self.seen, self.count = stub, 0, 0

    async def __call__(self) -> int:
        fresh = self.stub.requests[self.seen:]
        self.seen += len(fresh)
        self.count += sum(1 for r in fresh if r.method == "GET" and r.path.endswith("/sync"))
        return self.count


async def on_stub(env: Env, size: int, idle_s: float) -> None:
    async with running_stub() as stub, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0)) as http:
        assert stub.base_url is not None
        users = [f"stub{i}" for i in range(size)]
        for user in users:
            stub.register(user, PASSWORD)
        proxy = FleetProxy(stub.base_url, env.tmp / f"e2e-stub{size}", size)
        # The stub wakes every parked /sync at each change (a key upload): with thousands
        # parked, each login would cost the runner (not the proxy) thousands of rebuilds. So
        # the background syncs wait out the logins (a few at a time: the catch-up gate).
        hold = stub.faults.add(r"/sync$", method="GET", query_regex="set_presence=offline",
                               delay=30 + 0.05 * size)
        fleet = await measure("e2eproxy", "stub", proxy, http, users, StubSyncs(stub), idle_s,
                              after_logins=lambda: stub.faults.remove(hold))
        report(env, fleet, None)


async def run(env: Env) -> None:
    sizes = env.state.get("accounts_sizes") or ([100] if env.quick else [100, 1000])
    stub_size = env.state.get("stub_accounts", 0 if env.quick else 3000)
    idle_s = 30.0 if env.quick else 60.0
    sizes = [n for n in sizes if n > 0]  # --accounts 0: the stub alone
    if sizes:
        await on_synapse(env, sizes, idle_s, env.state.get("with_pantalaimon", True))
    if stub_size:
        await on_stub(env, stub_size, idle_s)
