"""The metrics' parts on their own: bounded labels, the sync lag read at scrape time, and the
health checks' caching (one check per period, however many probes)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import generate_latest

from e2eproxy.crypto.results import Decrypted, DecryptionFailure, FailureReason, SenderTrust
from e2eproxy.errors import StoreError
from e2eproxy.monitoring.health import STORE, HealthChecker, homeserver_check
from e2eproxy.monitoring.metrics import Metrics
from e2eproxy.protocol import api
from e2eproxy.types import SessionId
from tests.support.timing import ManualTimer


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_decryptions_are_counted_by_cause_and_withheld_apart() -> None:
    metrics = Metrics()
    ok = Decrypted({}, SessionId("s"), 0, "key", None, SenderTrust.VERIFIED)
    missing = DecryptionFailure(FailureReason.MISSING_SESSION, "no key")
    withheld = DecryptionFailure(FailureReason.MISSING_SESSION, "no key", "s", "m.unverified")
    replayed = DecryptionFailure(FailureReason.REPLAYED, "seen")
    metrics.count_decryptions([ok, ok, missing, withheld, replayed])
    assert sample(metrics, "e2eproxy_decrypted_events_total") == 2
    assert sample(metrics, "e2eproxy_decryption_failures_total", cause="missing_session") == 1
    assert sample(metrics, "e2eproxy_decryption_failures_total", cause="withheld") == 1
    assert sample(metrics, "e2eproxy_decryption_failures_total", cause="replayed") == 1
    # Every cause is there from the start, at 0.
    assert sample(metrics, "e2eproxy_decryption_failures_total", cause="room_mismatch") == 0


def test_to_device_types_are_bounded_and_messages_counted_per_device() -> None:
    metrics = Metrics()
    messages = {"@a:x": {"A1": {}, "A2": {}}, "@b:x": {"B1": {}}}
    metrics.count_to_device_sent(api.to_device("m.room.encrypted", messages))
    metrics.count_to_device_sent(api.to_device("com.example.@a:x.!room:x", messages))
    metrics.count_to_device_received(["m.room_key", "m.room_key", "!room:x", "@a:x"])
    assert sample(metrics, "e2eproxy_to_device_sent_total", type="m.room.encrypted") == 3
    assert sample(metrics, "e2eproxy_to_device_sent_total", type="other") == 3
    assert sample(metrics, "e2eproxy_to_device_received_total", type="m.room_key") == 2
    assert sample(metrics, "e2eproxy_to_device_received_total", type="other") == 2
    text = generate_latest(metrics.registry).decode()
    assert "@a:x" not in text and "!room:x" not in text


def test_a_key_share_counts_the_devices_its_room_key_went_to() -> None:
    metrics = Metrics()
    metrics.count_key_share([
        api.to_device("m.room.encrypted", {"@a:x": {"A1": {}, "A2": {}}}),
        api.to_device("m.room.encrypted", {"@b:x": {"B1": {}}}),
        api.to_device("m.room_key.withheld", {"@c:x": {"C1": {}}}),  # no key: not counted
    ])
    metrics.count_key_share([api.to_device("m.room_key.withheld", {"@c:x": {"C1": {}}})])
    assert sample(metrics, "e2eproxy_room_key_shares_total") == 1
    assert sample(metrics, "e2eproxy_room_key_share_devices_total") == 3


@dataclass
class FakeAccount:
    synced_at: float


@dataclass
class FakeRegistry:
    timer: ManualTimer
    accounts: dict[Any, FakeAccount] = field(default_factory=dict)


def test_sync_lag_is_a_distribution_and_a_maximum_never_a_series_per_account() -> None:
    timer = ManualTimer()
    now = timer.monotonic()
    main = FakeRegistry(timer, {"a": FakeAccount(now - 2), "b": FakeAccount(now - 40)})
    other = FakeRegistry(timer, {"c": FakeAccount(now - 1000)})
    metrics = Metrics()
    metrics.accounts.watch("main", main)
    metrics.accounts.watch("other", other)
    assert sample(metrics, "e2eproxy_accounts_held", server="main") == 2
    assert sample(metrics, "e2eproxy_accounts_held", server="other") == 1
    assert sample(metrics, "e2eproxy_background_sync_lag_max_seconds") == 1000
    lag = "e2eproxy_background_sync_lag_seconds_bucket"
    assert sample(metrics, lag, le="5.0") == 1
    assert sample(metrics, lag, le="60.0") == 2
    assert sample(metrics, lag, le="900.0") == 2
    assert sample(metrics, lag, le="+Inf") == 3
    assert sample(metrics, "e2eproxy_background_sync_lag_seconds_gsum") == 1042
    timer.advance(100)  # read at each scrape
    assert sample(metrics, "e2eproxy_background_sync_lag_max_seconds") == 1100
    metrics.accounts.unwatch("other", other)
    assert sample(metrics, "e2eproxy_accounts_held", server="other") is None
    assert sample(metrics, "e2eproxy_background_sync_lag_max_seconds") == 140


class CountingStore:
    """Only what the store check calls; it fails on demand."""

    def __init__(self) -> None:
        self.calls = 0
        self.broken = False
        self.release = asyncio.Event()
        self.release.set()

    async def has_account(self, account: Any) -> bool:
        self.calls += 1
        await self.release.wait()
        if self.broken:
            raise StoreError("the store is closed")
        return False


async def test_health_checks_once_a_period_however_many_probes_come() -> None:
    timer = ManualTimer()
    checker = HealthChecker(["main"], timer, ttl_s=5.0)
    store = CountingStore()
    checker.store = store  # type: ignore[assignment]
    store.release.clear()
    probes = [asyncio.ensure_future(checker.report()) for _ in range(5)]
    await asyncio.sleep(0.01)
    store.release.set()
    reports = await asyncio.gather(*probes)
    assert store.calls == 1, "probes during a check wait for that one"
    # No upstream was added for "main": not ready, and the report says why.
    assert [r.ready for r in reports] == [False] * 5
    assert reports[0].checks == {STORE: None, homeserver_check("main"): "not started yet"}
    store.broken = True
    assert (await checker.report()).checks[STORE] is None, "kept for the period"
    assert store.calls == 1
    timer.advance(5.0)
    report = await checker.report()
    assert store.calls == 2
    assert report.checks[STORE] == "StoreError: the store is closed"
    assert report.to_json()["status"] == "unavailable"
    assert report.to_json()["checks"][STORE] == "StoreError: the store is closed"


async def test_a_check_that_hangs_fails_after_its_timeout() -> None:
    checker = HealthChecker([], ManualTimer(), timeout_s=0.05)
    store = CountingStore()
    store.release.clear()  # never answers
    checker.store = store  # type: ignore[assignment]
    report = await checker.report()
    assert report.checks == {STORE: "no answer within 0.05 s"}
    assert not report.ready
