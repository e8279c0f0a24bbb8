"""Workload soak (issue 13): 50 plain clients syncing and sending through one proxy for 10 minutes.

The stub homeserver runs in this process (as for the other stub workloads), the proxy is the real
child process with its SQLite store. Every client logs in through the proxy (its own crypto
device), long-polls /sync through it and sends a message about every SEND_EVERY_S seconds into
its encrypted room (ten rooms of five members: each message is decrypted for four others).
Every few seconds the proxy child is sampled: RSS (/proc/PID/status VmRSS), open file
descriptors (/proc/PID/fd), asyncio tasks (the control socket's `stats`) and the store's size
on disk (the SQLite file, its WAL and shared memory). After the warm-up (the first
WARMUP_SHARE of the run) a least-squares line is fitted to each metric: its slope per minute is
reported, and the metric counts as flat when the line does not rise over the measured window
by more than twice the spread of the samples around it, or than a floor (1 MB, 1 fd, 1 task,
64 KB).

    python -m bench --only soak                       # 50 clients, 10 minutes
    python -m bench --only soak --quick               # 1 minute
    python -m bench --only soak --soak-minutes 3 --soak-clients 20
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.chaos_load import TRANSIENT
from bench.common import ProxyProcess, Row
from bench.devices import encryption_state
from bench.env import Env
from e2eproxy.control.client import call
from e2eproxy.control.protocol import SOCKET_NAME
from tests.support.plain_client import PlainClient
from tests.support.stub_homeserver import StubHomeserver, running_stub

CLIENTS, MINUTES, QUICK_MINUTES = 50, 10.0, 1.0
ROOM_SIZE = 5
SEND_EVERY_S = 10.0  # per client: 50 clients make 5 messages/s, 20 decryptions/s
SYNC_TIMEOUT_MS = 30_000
WARMUP_SHARE = 0.2
STORE_FILES = ("e2eproxy.db", "e2eproxy.db-wal", "e2eproxy.db-shm")
# Below these, a fitted change over the window is flat whatever the noise.
FLOORS = {"rss_mb": 1.0, "open_fds": 1.0, "tasks": 1.0, "store_kb": 64.0}
UNITS = {"rss_mb": "MB", "open_fds": "fds", "tasks": "tasks", "store_kb": "KB"}
_txns = itertools.count(1)


@dataclass
class Load:
    sent: int = 0
    received: int = 0  # decrypted messages the clients' /sync brought
    undecryptable: int = 0
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class Sample:
    at_s: float
    values: dict[str, float]


def file_kb(data_dir: Path, *names: str) -> float:
    return sum((data_dir / name).stat().st_size for name in names
               if (data_dir / name).exists()) / 1024


async def sample(proxy: ProxyProcess, began: float) -> Sample:
    pid = proxy.pid
    stats = await call(proxy.data_dir / SOCKET_NAME, "stats", timeout=10)
    return Sample(time.monotonic() - began, {
        "rss_mb": proxy.memory_kib()["VmRSS"] / 1024,
        "open_fds": float(len(list(Path(f"/proc/{pid}/fd").iterdir()))),
        "tasks": float(stats["tasks"]),
        "store_kb": file_kb(proxy.data_dir, *STORE_FILES),
        "wal_kb": file_kb(proxy.data_dir, *STORE_FILES[1:]),  # in the store's figure too
    })


async def client_sync(client: PlainClient, stop: asyncio.Event, load: Load) -> None:
    """Long-polls through the proxy, keeping only the token and the counts (not the bodies)."""
    since: str | None = None
    while not stop.is_set():
        params = {"timeout": str(SYNC_TIMEOUT_MS), **({"since": since} if since else {})}
        try:
            status, body = await client.request("GET", "/_matrix/client/v3/sync", params=params)
        except TRANSIENT as exc:
            load.errors[f"sync {type(exc).__name__}"] += 1
            await asyncio.sleep(1)
            continue
        if status != 200 or not isinstance(body, dict):
            load.errors[f"sync {status}"] += 1
            await asyncio.sleep(1)
            continue
        initial, since = since is None, body["next_batch"]
        for room in body.get("rooms", {}).get("join", {}).values():
            for event in room.get("timeline", {}).get("events", []):
                if event.get("content", {}).get("org.e2eproxy.undecryptable"):
                    load.undecryptable += 1
                elif event.get("type") == "m.room.message" and not initial:
                    load.received += 1


async def client_send(client: PlainClient, room_id: str, stop: asyncio.Event, load: Load,
                      rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(0, SEND_EVERY_S))
    while not stop.is_set():
        try:
            status, _ = await client.send_raw(
                room_id, {"msgtype": "m.text", "body": f"soak {next(_txns)}"},
                txn=f"soak{next(_txns)}")
        except TRANSIENT as exc:
            status = 0
            load.errors[f"send {type(exc).__name__}"] += 1
        if status == 200:
            load.sent += 1
        elif status:
            load.errors[f"send {status}"] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SEND_EVERY_S * rng.uniform(0.5, 1.5))


async def clients_in_rooms(stub: StubHomeserver, http: aiohttp.ClientSession, base: str,
                           count: int) -> list[tuple[PlainClient, str]]:
    """`count` users logged in through the proxy, in encrypted rooms of ROOM_SIZE."""
    clients = []
    for number in range(count):
        stub.register(f"soak{number}", "pw")
        client = PlainClient(http, base)
        await client.login(f"soak{number}", "pw")
        clients.append(client)
    placed = []
    for first in range(0, count, ROOM_SIZE):
        members = clients[first:first + ROOM_SIZE]
        room_id = stub.create_room(members[0].user_id,
                                   invite=[c.user_id for c in members[1:]],
                                   initial_state=[encryption_state()])
        for member in members[1:]:
            stub.room_ops.join(stub.room(room_id), member.user_id)
        placed.extend((member, room_id) for member in members)
    return placed


async def run(env: Env) -> None:
    args = env.state.get("args")
    minutes = getattr(args, "soak_minutes", None) or (QUICK_MINUTES if env.quick else MINUTES)
    count = getattr(args, "soak_clients", None) or CLIENTS
    duration = minutes * 60
    every = min(5.0, max(1.0, duration / 120))
    load, samples = Load(), []
    async with running_stub() as stub:
        assert stub.base_url is not None
        proxy = ProxyProcess(stub.base_url, env.tmp / "proxy-soak")
        await proxy.start()
        timeout = aiohttp.ClientTimeout(total=None, sock_read=SYNC_TIMEOUT_MS / 1000 + 30)
        connector = aiohttp.TCPConnector(limit=0)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                placed = await clients_in_rooms(stub, http, proxy.url, count)
                stop = asyncio.Event()
                rng = random.Random(13)
                tasks = [asyncio.create_task(client_sync(c, stop, load)) for c, _ in placed]
                tasks += [asyncio.create_task(client_send(c, room, stop, load, rng))
                          for c, room in placed]
                began = time.monotonic()
                print(f"  {count} clients for {minutes:g} min, a sample every {every:g} s",
                      flush=True)
                while time.monotonic() - began < duration:
                    samples.append(await sample(proxy, began))
                    stub.requests.clear()  # the stub records every request: not our memory
                    await asyncio.sleep(every)
                samples.append(await sample(proxy, began))
                stop.set()
                await asyncio.gather(*tasks)
        finally:
            await proxy.stop()
    report(env, load, samples, duration, count)


@dataclass
class Fit:
    slope_per_min: float
    change: float  # of the fitted line over the measured window
    spread: float  # standard deviation of the samples around the line
    first: float
    last: float

    def flat(self, floor: float) -> bool:
        """No growth beyond the noise (a metric that settles lower is no leak)."""
        return self.change <= max(2 * self.spread, floor)


def fit(points: list[tuple[float, float]]) -> Fit:
    xs, ys = [x for x, _ in points], [y for _, y in points]
    slope, intercept = statistics.linear_regression(xs, ys)
    residuals = [y - (slope * x + intercept) for x, y in points]
    return Fit(slope * 60, slope * (xs[-1] - xs[0]),
               statistics.pstdev(residuals), ys[0], ys[-1])


def report(env: Env, load: Load, samples: list[Sample], duration: float, count: int) -> None:
    add = env.report.add
    after = [s for s in samples if s.at_s >= duration * WARMUP_SHARE]
    minutes = (after[-1].at_s - after[0].at_s) / 60 if len(after) > 1 else 0
    add(Row("soak", f"messages sent by {count} clients", load.sent / duration, None, "msg/s",
            note=f"{load.sent} in {duration / 60:g} min; {load.received} decrypted "
                 f"deliveries by /sync"))
    add(Row("soak", "errors (sends and syncs)", sum(load.errors.values()), None, "",
            target="0", met=not load.errors, note=str(dict(load.errors)) or None))
    add(Row("soak", "undecryptable in the clients' /sync", load.undecryptable, None, "",
            target="0", met=load.undecryptable == 0))
    fits = {}
    for name, unit in UNITS.items():
        if len(after) < 3:
            break
        line = fit([(s.at_s, s.values[name]) for s in after])
        fits[name] = vars(line)
        add(Row("soak", f"{name} slope after warm-up", line.slope_per_min, None, f"{unit}/min",
                baseline=f"{line.first:.4g} -> {line.last:.4g} {unit}", target="flat",
                met=line.flat(FLOORS[name]),
                note=f"fitted change {line.change:+.3g} {unit} over {minutes:.1f} min, "
                     f"spread {line.spread:.3g}", samples=len(after)))
    if load.sent and "store_kb" in fits:
        per_message = fits["store_kb"]["slope_per_min"] * 1024 * duration / 60 / load.sent
        env.report.extra["soak_store_bytes_per_message"] = per_message
    env.report.extra["soak"] = {
        "fits": fits, "errors": dict(load.errors),
        "samples": [{"at_s": s.at_s, **s.values} for s in samples],
    }
