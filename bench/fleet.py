"""Helpers of the ``accounts`` workload: process counters from /proc, a Synapse that counts the
/sync requests it receives, users registered in bulk, logins at bounded concurrency, and
pantalaimon in a virtualenv of its own, side by side with e2eproxy."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.common import REPO, ProxyProcess, free_port, login, proc_memory_kib, stop_child
from tests.support.processes import DIE_WITH_PARENT
from tests.support.synapse import SynapseServer

PANTALAIMON = "pantalaimon==0.10.5"
PANTALAIMON_VENV = Path(os.environ.get("BENCH_PANTALAIMON_VENV",
                                       REPO / "bench" / ".venv-pantalaimon"))
_TICK = os.sysconf("SC_CLK_TCK")


# -- /proc ---------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (utime + stime of /proc/PID/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def write_calls(pid: int) -> int:
    """write(2)-family calls of a process (syscw of /proc/PID/io): its file writes; socket
    sends are not counted there."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    return proc_memory_kib(pid).get("VmRSS", 0)


# -- Synapse that counts its /sync requests ------------------------------------------------
class CountingSynapse(SynapseServer):
    """The e2e tier's Synapse with its Prometheus metrics on the client listener."""

    def write_config(self) -> Path:
        path = super().write_config()
        config = yaml.safe_load(path.read_text())
        config["enable_metrics"] = True
        config["listeners"][0]["resources"][0]["names"].append("metrics")
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    async def syncs_received(self, http: aiohttp.ClientSession) -> int:
        """/sync requests Synapse has received since it started (from any client)."""
        async with http.get(f"{self.base_url}/_synapse/metrics") as response:
            text = await response.text()
        total = 0.0
        for line in text.splitlines():
            if (line.startswith("synapse_http_server_requests_received_total{")
                    and 'servlet="SyncRestServlet"' in line):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    async def register_many(self, http: aiohttp.ClientSession, names: list[str],
                            password: str, concurrency: int = 8) -> None:
        url = self.base_url + "/_synapse/admin/v1/register"
        gate = asyncio.Semaphore(concurrency)

        async def one(name: str) -> None:
            async with gate:
                async with http.get(url) as response:
                    nonce = (await response.json())["nonce"]
                body = self._registration_body(nonce, name, password, False)
                async with http.post(url, json=body) as response:
                    if response.status != 200:
                        raise RuntimeError(f"register {name}: {await response.text()}")

        await asyncio.gather(*(one(n) for n in names))


async def login_all(http: aiohttp.ClientSession, base: str, names: list[str], password: str,
                    concurrency: int) -> list[float]:
    """Log every user in through `base`, `concurrency` at a time; the latency of each (s)."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(name: str) -> None:
        async with gate:
            began = time.perf_counter()
            await login(http, base, name, password)
            latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(one(n) for n in names))
    return latencies


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float,
                step: float = 0.1) -> float | None:
    """Seconds until `predicate` holds, or None after `timeout`."""
    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        if await predicate():
            return time.perf_counter() - began
        await asyncio.sleep(step)
    return None


# -- pantalaimon ---------------------------------------------------------------------------
def pantalaimon_binary() -> tuple[Path | None, str]:
    """pantalaimon from its own virtualenv, created on first use: (binary, "") or (None, why)."""
    binary = PANTALAIMON_VENV / "bin" / "pantalaimon"
    if binary.exists():
        return binary, ""
    print(f"  installing {PANTALAIMON} into {PANTALAIMON_VENV} (once)",
          flush=True)
    log = PANTALAIMON_VENV.parent / "pantalaimon-install.log"
    with log.open("wb") as out:
        steps = [[sys.executable, "-m", "venv", str(PANTALAIMON_VENV)],
                 [str(PANTALAIMON_VENV / "bin" / "pip"), "install", "-q", PANTALAIMON]]
        for step in steps:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                return None, f"could not install {PANTALAIMON} here (see {log})"
    return (binary, "") if binary.exists() else (None, f"{PANTALAIMON} has no binary")


class PantalaimonProcess:
    """pantalaimon for one homeserver, in a child process, with the proxy's interface."""

    def __init__(self, binary: Path, homeserver: str, data_dir: Path) -> None:
        self.binary = binary
        self.homeserver = homeserver
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "pantalaimon.conf"
        path.write_text(
            "[Default]\nLogLevel = Warning\nNotifications = Off\n\n"
            f"[bench]\nHomeserver = {self.homeserver}\nListenAddress = 127.0.0.1\n"
            f"ListenPort = {self.port}\nSSL = False\nUseKeyring = False\n"
            "IgnoreVerification = True\n"
        )
        return path

    async def start(self, timeout: float = 120.0) -> float:
        config = self.write_config()
        log = open(self.data_dir / "pantalaimon.log", "ab")  # noqa: SIM115
        began = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(self.binary), "--config", str(config), "--data-path", str(self.data_dir)],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=DIE_WITH_PARENT,
        )
        log.close()
        async with aiohttp.ClientSession() as http:
            while time.perf_counter() - began < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"pantalaimon exited with {self.proc.returncode}")
                try:
                    async with http.get(f"{self.url}/_matrix/client/versions") as response:
                        await response.read()
                        return time.perf_counter() - began
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        raise RuntimeError("pantalaimon did not start in time")

    async def stop(self) -> None:
        await stop_child(self.proc)


def describe(data: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in data.items())


class FleetProxy(ProxyProcess):
    """The proxy under test with room for a fleet (servers.NAME.max_accounts)."""

    def __init__(self, homeserver: str, data_dir: Path, max_accounts: int,
                 profile: Path | None = None) -> None:
        super().__init__(homeserver, data_dir, profile=profile)
        self.max_accounts = max_accounts

    def write_config(self) -> Path:
        path = super().write_config()
        marker = "upstream_timeout = 120\n"
        text = path.read_text()
        path.write_text(text.replace(marker, f"{marker}max_accounts = {self.max_accounts}\n", 1))
        return path
