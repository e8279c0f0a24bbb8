"""Readiness: the store answers and every homeserver answers ``GET /_matrix/client/versions``.

Each check's result is kept for a few seconds (``ttl_s``), and probes that come while a check
runs wait for that one: however often a load balancer, systemd or Kubernetes asks, the store
and the homeserver see at most one check each per period.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from e2eproxy.errors import E2EProxyError, UpstreamError
from e2eproxy.proxy.upstream import Upstream
from e2eproxy.store import AccountKey, Store
from e2eproxy.timing import Timer
from e2eproxy.types import DeviceId, UserId

# Seconds a check's result is reused.
TTL_S = 5.0
# Seconds a check may take before it counts as failed.
CHECK_TIMEOUT_S = 5.0
STORE = "store"
VERSIONS = "/_matrix/client/versions"
# Looked up, never created: one indexed read that needs the store open and answering.
_PROBE = AccountKey(UserId("@e2eproxy-health-check:invalid"), DeviceId("HEALTH"))

Check = Callable[[], Awaitable[str | None]]


def homeserver_check(server: str) -> str:
    """The name of a listener's homeserver check in the report."""
    return f"homeserver:{server}"


@dataclass(frozen=True)
class HealthReport:
    """Each check's problem, or None when it passed."""

    checks: dict[str, str | None]

    @property
    def ready(self) -> bool:
        return all(problem is None for problem in self.checks.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "ready" if self.ready else "unavailable",
            "checks": {name: problem or "ok" for name, problem in self.checks.items()},
        }


class HealthChecker:
    """The process's readiness. ``store`` and each server's upstream are set as they come up:
    until then their check fails ("not open yet", "not started yet")."""

    def __init__(self, servers: Sequence[str], timer: Timer, *, ttl_s: float = TTL_S,
                 timeout_s: float = CHECK_TIMEOUT_S) -> None:
        self.timer = timer
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.store: Store | None = None
        self._servers = list(servers)
        self._upstreams: dict[str, Upstream] = {}
        self._results: dict[str, tuple[float, str | None]] = {}
        self._running: dict[str, asyncio.Task[str | None]] = {}

    def add_upstream(self, server: str, upstream: Upstream) -> None:
        self._upstreams[server] = upstream

    async def report(self) -> HealthReport:
        names = [STORE, *(homeserver_check(server) for server in self._servers)]
        checks = [self._check_store, *(self._upstream_check(s) for s in self._servers)]
        problems = await asyncio.gather(*(self._cached(n, c) for n, c in zip(names, checks,
                                                                             strict=True)))
        return HealthReport(dict(zip(names, problems, strict=True)))

    async def close(self) -> None:
        for task in self._running.values():
            task.cancel()
        for task in list(self._running.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the checks ----------------------------------------------------------------------
    async def _check_store(self) -> str | None:
        if self.store is None:
            return "not open yet"
        await self.store.has_account(_PROBE)
        return None

    def _upstream_check(self, server: str) -> Check:
        async def check() -> str | None:
            upstream = self._upstreams.get(server)
            if upstream is None:
                return "not started yet"
            status, body = await upstream.request_json("GET", VERSIONS)
            if status != 200 or not isinstance(body, dict) or (
                not isinstance(body.get("versions"), list)
            ):
                return f"the homeserver answered GET {VERSIONS} with {status}"
            return None

        return check

    # -- caching -------------------------------------------------------------------------
    async def _cached(self, name: str, check: Check) -> str | None:
        kept = self._results.get(name)
        if kept is not None and self.timer.monotonic() - kept[0] < self.ttl_s:
            return kept[1]
        task = self._running.get(name)
        if task is None:
            task = self._running[name] = asyncio.create_task(self._run(name, check),
                                                             name=f"health {name}")
        # Shielded: a probe that gives up does not cancel the check others wait for.
        return await asyncio.shield(task)

    async def _run(self, name: str, check: Check) -> str | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                problem = await check()
        except TimeoutError:
            problem = f"no answer within {self.timeout_s:g} s"
        except UpstreamError as exc:
            problem = exc.message
        except E2EProxyError as exc:  # our messages name no secret
            problem = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a driver's message may name hosts and users: the type only
            problem = f"failed ({type(exc).__name__})"
        finally:
            self._running.pop(name, None)
        self._results[name] = (self.timer.monotonic(), problem)
        return problem
