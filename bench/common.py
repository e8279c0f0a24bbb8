"""Shared by the workloads: statistics, A/B interleaving, result rows, and the proxy process.

The proxy under test is the real command line (``python -m e2eproxy run``) in a child process
with its SQLite store, so its CPU is not the load generator's and its memory is its own
(``/proc/PID/status``). The stub homeserver runs in the runner's process, where the workloads
shape its state directly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

V3 = "/_matrix/client/v3"


# -- statistics ----------------------------------------------------------------------------
def median(samples: list[float]) -> float:
    return statistics.median(samples)


def p90(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


async def interleave(
    variants: dict[str, Callable[[], Awaitable[float]]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run each variant once per round, A B A B ..., the order reversed every other round so
    neither always goes first. Returns the samples of each variant (warm-up rounds dropped)."""
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for number in range(warmup + rounds):
        order = names if number % 2 == 0 else names[::-1]
        for name in order:
            value = await variants[name]()
            if number >= warmup:
                samples[name].append(value)
    return samples


# -- results -------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the table: a measurement, optionally against a baseline and a target."""

    workload: str
    name: str
    median: float
    p90: float | None = None
    unit: str = "ms"
    baseline: str | None = None  # e.g. "direct 0.41"
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    note: str | None = None
    samples: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(f"  {format_row(row)}", flush=True)
        return row


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return f"{text} {unit}".rstrip()


def format_row(row: Row) -> str:
    status = {True: "met", False: "MISSED", None: ""}[row.met]
    ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
    return (
        f"{row.workload:<12} {row.name:<44} {_num(row.median, row.unit):>12} "
        f"{_num(row.p90, row.unit):>12} {row.baseline or '':<22} {ratio:>7}  "
        f"{row.target or '':<18} {status}"
    )


def table(rows: list[Row]) -> str:
    head = (
        f"{'workload':<12} {'measurement':<44} {'median':>12} {'p90':>12} {'compared with':<22} "
        f"{'ratio':>7}  {'target':<18} status"
    )
    return "\n".join([head, "-" * len(head)] + [format_row(r) for r in rows])


def markdown(rows: list[Row]) -> str:
    lines = [
        "| workload | measurement | median | p90 | compared with | ratio | target | status |",
        "|---|---|--:|--:|---|--:|---|---|",
    ]
    for r in rows:
        status = {True: "met", False: "**missed**", None: ""}[r.met]
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        lines.append(
            f"| {r.workload} | {r.name} | {_num(r.median, r.unit)} | {_num(r.p90, r.unit)} | "
            f"{r.baseline or ''} | {ratio} | {r.target or ''} | {status} |"
        )
    return "\n".join(lines)


# -- machine -------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "load_avg_at_start": os.getloadavg(),
    }


def proc_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the proxy under test ------------------------------------------------------------------
class ProxyProcess:
    """``python -m e2eproxy run`` for one homeserver, in a child process."""

    def __init__(self, homeserver: str, data_dir: Path, extra_config: str = "",
                 profile: Path | None = None, repo: str | None = None) -> None:
        self.homeserver = homeserver
        # The checkout it runs from: `repo`, else BENCH_PROXY_REPO, else this one.
        self.repo = repo
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_config = extra_config
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        self.profile = profile

    def write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir.parent / f"{self.data_dir.name}.toml"
        path.write_text(
            f'[servers.bench]\nhomeserver = "{self.homeserver}"\n'
            f'listen = "127.0.0.1:{self.port}"\nupstream_timeout = 120\n\n'
            f'[store]\ndata_dir = "{self.data_dir}"\nuse_keyring = false\n\n'
            f'[log]\nlevel = "warning"\n\n{self.extra_config}'
        )
        return path

    async def start(self, timeout: float = 30.0) -> float:
        """Start the child and wait for its first answer; returns seconds from spawn."""
        config = self.write_config()
        env = {k: v for k, v in os.environ.items() if k != "E2EPROXY_STORE_PASSPHRASE"}
        log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "ab")  # noqa: SIM115
        began = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable,
             *(["-m", "cProfile", "-o", str(self.profile)] if self.profile else []),
             "-m", "e2eproxy", "run", "--config", str(config)],
            cwd=self.repo or os.environ.get("BENCH_PROXY_REPO", str(REPO)),
            env=env,
            stdout=log,
            stderr=log,
        )
        log.close()
        async with aiohttp.ClientSession() as http:
            while time.perf_counter() - began < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"proxy exited with {self.proc.returncode}; see its log")
                try:
                    async with http.get(f"{self.url}/_matrix/client/versions") as response:
                        await response.read()
                        self.startup_s = time.perf_counter() - began
                        return self.startup_s
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.005)
        raise RuntimeError("proxy did not start in time")

    @property
    def pid(self) -> int:
        assert self.proc is not None, "proxy not started"
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL, as a crash: no cleanup at all. `start` again runs on the same data dir and
        port."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def memory_kib(self) -> dict[str, int]:
        assert self.proc is not None
        return proc_memory_kib(self.proc.pid)

    async def stop(self) -> None:
        await stop_child(self.proc)


async def stop_child(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, up to 10 s to exit, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    for _ in range(200):
        if proc.poll() is not None:
            return
        await asyncio.sleep(0.05)
    proc.kill()
    proc.wait()


# -- HTTP helpers --------------------------------------------------------------------------
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(http: aiohttp.ClientSession, base: str, user: str, password: str,
                device_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    }
    if device_id:
        body["device_id"] = device_id
    async with http.post(f"{base}{V3}/login", json=body) as response:
        data = await response.json()
        if response.status != 200:
            raise RuntimeError(f"login failed: {response.status} {data}")
        return data


async def timed_request(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[float, int, bytes]:
    began = time.perf_counter()
    async with http.request(method, url, **kwargs) as response:
        body = await response.read()
        status = response.status
    return time.perf_counter() - began, status, body
