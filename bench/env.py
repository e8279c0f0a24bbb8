"""The environment the stub workloads share: one stub homeserver in this process, one proxy
child in front of it, and one HTTP client session (keep-alive, like a real client)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import ProxyProcess, Report, Row, login, median, p90
from tests.support.stub_homeserver import StubHomeserver, running_stub


@dataclass
class Env:
    quick: bool
    tmp: Path
    report: Report
    stub: StubHomeserver | None = None
    proxy: ProxyProcess | None = None
    http: aiohttp.ClientSession | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def direct(self) -> str:
        if "direct" in self.state:
            return str(self.state["direct"])
        assert self.stub is not None and self.stub.base_url is not None
        return self.stub.base_url

    @property
    def proxied(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    async def user_through_proxy(self, localpart: str, device_id: str | None = None
                                 ) -> dict[str, Any]:
        """Register on the stub, log in through the proxy (which creates the crypto device)."""
        assert self.stub is not None and self.http is not None
        if self.stub.accounts.users.get(self.stub.accounts.user_id_for(localpart)) is None:
            self.stub.register(localpart, "pw")
        return await login(self.http, self.proxied, localpart, "pw", device_id)

    def record_memory(self, after: str) -> None:
        if self.proxy is not None:
            self.state.setdefault("proxy_memory", {})[after] = self.proxy.memory_kib()


@contextlib.asynccontextmanager
async def stub_env(quick: bool, tmp: Path, report: Report, profile: str | None = None
                   ) -> AsyncIterator[Env]:
    async with running_stub() as stub:
        assert stub.base_url is not None
        profile_path = tmp / "proxy.prof" if profile else None
        proxy = ProxyProcess(stub.base_url, tmp / "proxy-stub", profile=profile_path)
        await proxy.start()
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as http:
            env = Env(quick, tmp, report, stub, proxy, http)
            try:
                yield env
            finally:
                await proxy.stop()
                if profile_path is not None and profile_path.exists():
                    print_profile(profile_path)


def print_profile(path: Path, top: int = 35) -> None:
    import pstats

    print("\n--- cProfile of the proxy child (by cumulative, then by own time) ---")
    stats = pstats.Stats(str(path))
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


def compare(
    env: Env, workload: str, name: str, subject: list[float], base: list[float],
    base_name: str, *, scale: float = 1000.0, unit: str = "ms", added_name: str | None = None,
    target: str | None = None, check: Callable[[float, float], bool] | None = None,
) -> tuple[float, float]:
    """The subject's row (median, p90, ratio over the baseline) and, with `added_name`, a row for
    what it adds over the baseline. `check(added, ratio)` decides the target.
    Returns (median added, ratio)."""
    s, b = median(subject) * scale, median(base) * scale
    ratio = s / b if b else float("nan")
    extra = s - b
    met = check(extra, ratio) if check is not None else None
    env.report.add(Row(workload, name, s, p90(subject) * scale, unit,
                       f"{base_name} {b:.3g} {unit}", ratio,
                       None if added_name else target, None if added_name else met,
                       samples=len(subject)))
    if added_name:
        env.report.add(Row(workload, added_name, extra, None, unit, target=target, met=met))
    return extra, ratio
