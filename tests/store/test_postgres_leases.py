"""Leases across processes on one PostgreSQL store: one winner per race, stale holders fenced.

The in-process contract tests (``test_contract``) share one clock; here every instance has its
own connections, one lives in a child process, and clocks are real (a "paused" instance is one
whose clock lags by more than the lease: it still believes its lease valid).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from e2eproxy.crypto.changes import Changes
from e2eproxy.errors import StoreLocked
from e2eproxy.store import postgres
from e2eproxy.store.base import LEASE_MS, AccountKey
from e2eproxy.store.postgres import PostgresStore
from e2eproxy.store.txn import Put
from e2eproxy.types import DeviceId, UserId

from .conftest import ALICE

ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE = "shared by every instance"
ACCOUNTS = [AccountKey(UserId(f"@u{i}:example.org"), DeviceId("DEV")) for i in range(40)]


class OffsetClock:
    """Wall-clock ms shifted by ``offset_ms``: negative lags (a paused process's view)."""

    def __init__(self, offset_ms: int = 0) -> None:
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms


class Child:
    """``pg_lease_child`` in its own process: another e2eproxy instance on the same database."""

    def __init__(self, url: str, data_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.store.pg_lease_child", url, str(data_dir), PASSPHRASE],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    async def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 30)
        assert line, f"the child died (exit {self.proc.poll()})"
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def ready(self) -> None:
        assert await self._line() == {"ready": True}

    async def ask(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return await self._line()

    def stop(self) -> None:
        if self.proc.stdin is not None and self.proc.poll() is None:
            self.proc.stdin.write('{"op": "exit"}\n')
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
async def child(postgres_url: str, tmp_path: Path) -> AsyncIterator[Child]:
    # The parent creates the store first, so the child only unlocks it.
    first = PostgresStore(postgres_url, tmp_path, passphrase=PASSPHRASE, scrypt_n=2**10)
    await first.open()
    await first.close()
    process = Child(postgres_url, tmp_path)
    try:
        await process.ready()
        yield process
    finally:
        process.stop()


async def _store(url: str, data_dir: Path, clock: OffsetClock | None = None) -> PostgresStore:
    store = PostgresStore(
        url, data_dir, passphrase=PASSPHRASE, scrypt_n=2**10, clock=clock or OffsetClock()
    )
    await store.open()
    return store


def _pair(account: AccountKey) -> list[str]:
    return [account.user_id, account.device_id]


async def _acquire_each(store: PostgresStore, at: float) -> list[int | None]:
    await asyncio.sleep(max(0.0, at - time.time()))
    leases: list[int | None] = []
    for account in ACCOUNTS:
        try:
            leases.append((await store.acquire_lease(account)).generation)
        except StoreLocked:
            leases.append(None)
    return leases


async def test_two_processes_race_for_leases_and_one_wins_each(
    child: Child, postgres_url: str, tmp_path: Path
) -> None:
    store = await _store(postgres_url, tmp_path)
    try:
        at = time.time() + 0.3  # both start together: every account is contested
        ours, theirs = await asyncio.gather(
            _acquire_each(store, at),
            child.ask(op="acquire", accounts=[_pair(a) for a in ACCOUNTS], at=at),
        )
        for account, mine, other in zip(ACCOUNTS, ours, theirs["leases"], strict=True):
            assert (mine is None) != (other is None), f"one winner for {account.user_id}"
            assert (mine or other) == 1
            # The loser holds nothing to renew; the winner renews and saves under its lease.
            if mine is None:
                with pytest.raises(StoreLocked):
                    await store.renew_lease(account)
                saved = await child.ask(op="save", account=_pair(account), token="child")
                assert saved == {"ok": True}
            else:
                await store.renew_lease(account)
                await store.save(account, Changes(), sync_tokens={"client": "parent"})
    finally:
        await store.close()


async def test_a_paused_holder_is_fenced_after_another_process_takes_over(
    child: Child, postgres_url: str, tmp_path: Path
) -> None:
    # This instance's clock lags by two leases: its lease has long expired for everyone else.
    paused = await _store(postgres_url, tmp_path, OffsetClock(-2 * LEASE_MS))
    try:
        first = await paused.acquire_lease(ALICE)
        await paused.save(ALICE, Changes(), sync_tokens={"client": "before"})
        taken = await child.ask(op="acquire", accounts=[_pair(ALICE)], at=0)
        assert taken == {"leases": [first.generation + 1]}, "taken over: the generation went up"
        with pytest.raises(StoreLocked, match="nothing was saved"):
            await paused.save(ALICE, Changes(), sync_tokens={"client": "stale"})
        with pytest.raises(StoreLocked):
            await paused.set_sync_token(ALICE, "client", "stale")
        assert await child.ask(op="token", account=_pair(ALICE)) == {"token": "before"}
        with pytest.raises(StoreLocked, match="lost the lease"):
            await paused.renew_lease(ALICE)
        assert await child.ask(op="save", account=_pair(ALICE), token="after") == {"ok": True}
        assert await paused.get_sync_token(ALICE, "client") == "after"
    finally:
        await paused.close()


async def test_instances_racing_in_threads_get_one_winner_each(
    postgres_url: str, tmp_path: Path
) -> None:
    stores = [await _store(postgres_url, tmp_path) for _ in range(3)]
    try:
        results = await asyncio.gather(*(_acquire_each(store, 0) for store in stores))
        for index, account in enumerate(ACCOUNTS):
            winners = [r[index] for r in results if r[index] is not None]
            assert winners == [1], f"one winner for {account.user_id}"
    finally:
        for store in stores:
            await store.close()


async def test_a_takeover_waits_for_a_fenced_save_in_flight(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paused = await _store(postgres_url, tmp_path, OffsetClock(-2 * LEASE_MS))
    other = await _store(postgres_url, tmp_path)
    try:
        await paused.acquire_lease(ALICE)
        writing = threading.Event()
        real_put = postgres.PostgresTxn.put

        def slow_put(self: postgres.PostgresTxn, acct: int, op: Put) -> None:
            writing.set()  # the fence was checked: this transaction holds the lease row
            time.sleep(0.5)
            real_put(self, acct, op)

        monkeypatch.setattr(postgres.PostgresTxn, "put", slow_put)
        save = asyncio.create_task(paused.save(ALICE, Changes(), sync_tokens={"client": "late"}))
        await asyncio.to_thread(writing.wait, 5)
        started = time.monotonic()
        lease = await other.acquire_lease(ALICE)
        assert time.monotonic() - started > 0.3, "the takeover waited for the save to commit"
        await save  # it committed, under the lease it still held
        assert lease.generation == 2
        monkeypatch.undo()
        assert await other.get_sync_token(ALICE, "client") == "late"
        with pytest.raises(StoreLocked):
            await paused.save(ALICE, Changes(), sync_tokens={"client": "stale"})
    finally:
        await paused.close()
        await other.close()
