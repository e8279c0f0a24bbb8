"""Metrics read at scrape time from the accounts this process drives: how many each listener
holds, and how long since each one's last sync was applied (its sync lag), as a distribution
and its maximum: never one series per account, which would name the users the proxy holds."""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Seconds. An idle account's background long-poll returns every 30 s, so a healthy one stays
# under about 35; far beyond means its sync is stuck (a dead token, an unreachable server).
LAG_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)


class SyncingAccount(Protocol):
    @property
    def synced_at(self) -> float: ...


class MonotonicClock(Protocol):
    def monotonic(self) -> float: ...


class WatchedRegistry(Protocol):
    """What is read of a proxy.registry.AccountRegistry."""

    @property
    def accounts(self) -> Mapping[Any, SyncingAccount]: ...

    @property
    def timer(self) -> MonotonicClock: ...


class AccountsCollector(Collector):
    """``e2eproxy_accounts_held{server}``, ``e2eproxy_background_sync_lag_seconds`` (a gauge
    histogram over the held accounts) and ``e2eproxy_background_sync_lag_max_seconds``."""

    def __init__(self) -> None:
        self._registries: dict[str, WatchedRegistry] = {}

    def watch(self, server: str, registry: WatchedRegistry) -> None:
        self._registries[server] = registry

    def unwatch(self, server: str, registry: WatchedRegistry) -> None:
        if self._registries.get(server) is registry:
            del self._registries[server]

    def collect(self) -> Iterator[Metric]:
        held = GaugeMetricFamily(
            "e2eproxy_accounts_held", "Accounts (devices) this instance drives: it holds their "
            "store lease", labels=("server",))
        lags: list[float] = []
        for server, registry in sorted(self._registries.items()):
            accounts = list(registry.accounts.values())
            held.add_metric((server,), len(accounts))
            now = registry.timer.monotonic()
            lags.extend(max(0.0, now - account.synced_at) for account in accounts)
        yield held
        yield lag_histogram(lags)
        maximum = GaugeMetricFamily(
            "e2eproxy_background_sync_lag_max_seconds", "The longest time since a held "
            "account's last sync was applied (0 with no account)")
        maximum.add_metric((), max(lags, default=0.0))
        yield maximum


def lag_histogram(lags: list[float]) -> GaugeHistogramMetricFamily:
    """Held accounts by the time since their last sync was applied (either stream's: the
    background sync steps aside while a client syncs)."""
    lags = sorted(lags)
    buckets = [(str(bound), float(bisect.bisect_right(lags, bound))) for bound in LAG_BUCKETS]
    buckets.append(("+Inf", float(len(lags))))
    return GaugeHistogramMetricFamily(
        "e2eproxy_background_sync_lag_seconds", "Held accounts by the time since their last "
        "sync was applied", buckets=buckets, gsum_value=sum(lags))

