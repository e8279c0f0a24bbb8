"""Workload 5, scale of state: start-up time and resident memory of the proxy process with an
account of 1,000 encrypted rooms and 10,000 / 100,000 stored inbound Megolm sessions (SQLite
store filled as bench_store.py does), against an empty store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import vodozemac

from bench.bench_store import FILL_BATCH, _inbound
from bench.common import ProxyProcess, Row, median
from bench.env import Env
from e2eproxy.config import StoreConfig
from e2eproxy.crypto.changes import Changes
from e2eproxy.crypto.clock import ManualClock
from e2eproxy.crypto.machine import OlmMachine
from e2eproxy.store import AccountKey, open_store
from e2eproxy.types import DeviceId, UserId
from tests.support.stub_homeserver import StubHomeserver, running_stub

ROOMS = 1000
STARTUP_TARGET_S = 1.0
RSS_TARGET_MB = 60
RSS_BIG_TARGET_MB = 100
SETTLE_S = 1.0


async def fill(stub: StubHomeserver, data_dir: Path, sessions: int, number: int) -> None:
    assert stub.base_url is not None
    user = stub.register(f"state{number}", "pw")
    login = stub.login(user, "pw", device_id="STATEDEV")
    store = await open_store(StoreConfig(data_dir=data_dir, use_keyring=False), None)
    key = AccountKey(UserId(user), DeviceId("STATEDEV"))
    await store.acquire_lease(key)
    machine = OlmMachine(user, "STATEDEV", ManualClock(1_700_000_000_000))
    for r in range(ROOMS):
        room = f"!room{r}:stub.test"
        machine.update_room_encryption(room, {"algorithm": "m.megolm.v1.aes-sha2"})
        machine.update_room_members(room, {user: "join", f"@peer{r % 50}:stub.test": "join"})
    await store.save(key, machine.take_changes())
    await store.put_secret(key, "access_token", login.access_token)
    await store.put_secret(key, "homeserver", stub.base_url)
    session = vodozemac.InboundGroupSession(vodozemac.GroupSession().session_key)
    for start in range(0, sessions, FILL_BATCH):
        batch = [_inbound(session, n) for n in range(start, min(start + FILL_BATCH, sessions))]
        await store.save(key, Changes(inbound_group_sessions=batch))
    await store.release_lease(key)
    await store.close()


async def run(env: Env) -> None:
    sizes = (0, 10_000) if env.quick else (0, 10_000, 100_000)
    rounds = 2 if env.quick else 4
    async with running_stub() as stub:
        assert stub.base_url is not None
        dirs = {}
        for number, size in enumerate(sizes):
            dirs[size] = env.tmp / f"state-{size}"
            if size:
                began = time.perf_counter()
                await fill(stub, dirs[size], size, number)
                env.report.extra[f"state_fill_{size}_s"] = time.perf_counter() - began
        startup: dict[int, list[float]] = {s: [] for s in sizes}
        rss: dict[int, list[float]] = {s: [] for s in sizes}
        peak: dict[int, list[float]] = {s: [] for s in sizes}
        for number in range(rounds):
            for size in sizes if number % 2 == 0 else sizes[::-1]:
                proxy = ProxyProcess(stub.base_url, dirs[size])
                try:
                    startup[size].append(await proxy.start())
                    await asyncio.sleep(SETTLE_S)  # account restored, worker synced
                    memory = proxy.memory_kib()
                    rss[size].append(memory["VmRSS"] / 1024)
                    peak[size].append(memory["VmHWM"] / 1024)
                finally:
                    await proxy.stop()
    for size in sizes:
        what = f"{ROOMS} rooms, {size:,} sessions" if size else "empty store"
        s = median(startup[size])
        env.report.add(Row("state", f"start-up, {what}", s * 1000, max(startup[size]) * 1000,
                           "ms", target=f"< {STARTUP_TARGET_S:.0f} s", met=s < STARTUP_TARGET_S,
                           note="spawn to first answer; p90 column: slowest",
                           samples=len(startup[size])))
        limit = RSS_BIG_TARGET_MB if size >= 100_000 else RSS_TARGET_MB
        r = median(rss[size])
        env.report.add(Row("state", f"RSS after start, {what}", r, median(peak[size]), "MB",
                           target=f"<= {limit} MB", met=r <= limit,
                           note="p90 column: peak RSS (VmHWM)"))
