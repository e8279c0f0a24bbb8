"""Cross-process lease per account: a row (holder, expiry ms, generation) in the store.

Taking a lease is one transaction: free, expired or already ours -> ours until now + ``LEASE_MS``.
The generation goes up whenever the lease passes to a *different* holder, so a holder that gets
an account back after someone else had it sees a new number and rebuilds its engine.
Releasing keeps the holder and sets the expiry to 0: the same holder re-taking it does not reload.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from e2eproxy.crypto.clock import Clock
from e2eproxy.errors import StoreLocked
from e2eproxy.store.base import LEASE_MS, RENEW_EVERY_MS, AccountKey, Lease
from e2eproxy.store.txn import LeaseRow, Txn

T = TypeVar("T")


class Runner(Protocol):
    """A backend's ``run``: one transaction on its writer."""

    def __call__(self, fn: Callable[[Txn], T]) -> Awaitable[T]: ...


FIRST_BACKOFF_MS = 50
MAX_BACKOFF_MS = 1_000


def take(txn: Txn, account: AccountKey, holder: str, now_ms: int, lease_ms: int,
         want: bool = True, gone: str | None = None) -> LeaseRow:
    """Take or extend the lease if possible; returns the row as it now stands (maybe another's,
    then, with ``want``, marked as wanted by ``holder``, so its holder hands it over at its next
    renewal). A holder id starting with ``gone`` is known dead (a predecessor of this process in
    its data dir, see data_dir_claim.py): its lease counts as expired."""
    row = txn.lease_get(account)
    if row is None:
        new = LeaseRow(holder, now_ms + lease_ms, 1)
    elif row.holder == holder:
        new = LeaseRow(holder, now_ms + lease_ms, row.generation, row.wanted_by)
    elif row.expires_ms <= now_ms or (gone is not None and row.holder.startswith(gone)):
        new = LeaseRow(holder, now_ms + lease_ms, row.generation + 1)
    else:
        if want and row.wanted_by != holder:
            row = dataclasses.replace(row, wanted_by=holder)
            txn.lease_put(account, row)
        return row
    txn.lease_put(account, new)
    return new


def extend(txn: Txn, account: AccountKey, held: LeaseRow, now_ms: int, lease_ms: int
           ) -> LeaseRow | None:
    """Extend the lease we hold, if it is still the one we took (same holder, same
    generation); None when it was lost: taken over, even if given back since. Never takes it
    back: the state it would guard may have moved on elsewhere."""
    row = txn.lease_get(account)
    if row is None or row.holder != held.holder or row.generation != held.generation:
        return None
    new = LeaseRow(held.holder, now_ms + lease_ms, row.generation, row.wanted_by)
    txn.lease_put(account, new)
    return new


def unwant(txn: Txn, account: AccountKey, holder: str) -> None:
    """We stopped waiting for the account: the holder need not hand it over."""
    row = txn.lease_get(account)
    if row is not None and row.wanted_by == holder:
        txn.lease_put(account, dataclasses.replace(row, wanted_by=None))


def adoptable(row: LeaseRow, holder: str, now_ms: int) -> bool:
    """Whether an account whose lease row is ``row`` is driven by no one (its holder let it go
    or died) and awaited by no other instance, so ``holder`` may take it unasked."""
    return row.expires_ms <= now_ms and row.wanted_by in (None, holder)


def give_back(txn: Txn, account: AccountKey, holder: str) -> None:
    row = txn.lease_get(account)
    if row is not None and row.holder == holder:
        txn.lease_put(account, LeaseRow(holder, 0, row.generation, row.wanted_by))


class LeaseKeeper:
    """The leases one store instance holds, and the generation it last saw for each account."""

    def __init__(
        self,
        run: Runner,
        clock: Clock,
        holder: str,
        sleep: Callable[[float], Awaitable[None]],
        lease_ms: int = LEASE_MS,
        gone: str | None = None,
    ) -> None:
        self._run = run
        self._clock = clock
        self.holder = holder
        self._gone = gone  # holder ids of dead predecessors start with it (see take)
        self._sleep = sleep
        self._lease_ms = lease_ms
        self._held: dict[AccountKey, LeaseRow] = {}
        self._seen: dict[AccountKey, int] = {}

    def fence(self, account: AccountKey) -> LeaseRow | None:
        """The lease a save for ``account`` must still match, if this instance holds one."""
        return self._held.get(account)

    def forget(self, account: AccountKey) -> None:
        self._held.pop(account, None)
        self._seen.pop(account, None)

    async def _try(self, account: AccountKey, want: bool) -> LeaseRow:
        now = self._clock.now_ms()
        return await self._run(
            lambda txn: take(txn, account, self.holder, now, self._lease_ms, want, self._gone))

    def _granted(self, account: AccountKey, row: LeaseRow) -> Lease:
        previous = self._seen.get(account)
        self._held[account] = row
        self._seen[account] = row.generation
        reload = previous is not None and previous != row.generation
        wanted = row.wanted_by is not None and row.wanted_by != self.holder
        return Lease(row.holder, row.generation, row.expires_ms, reload, wanted)

    async def acquire(self, account: AccountKey, wait_ms: int, want: bool = True) -> Lease:
        deadline = self._clock.now_ms() + wait_ms
        backoff = FIRST_BACKOFF_MS
        while True:
            row = await self._try(account, want)
            if row.holder == self.holder:
                return self._granted(account, row)
            remaining = deadline - self._clock.now_ms()
            if remaining <= 0:
                if want:
                    await self._run(lambda txn: unwant(txn, account, self.holder))
                left_s = max(0, row.expires_ms - self._clock.now_ms()) / 1000
                raise StoreLocked(
                    f"{account.user_id}/{account.device_id} is in use by another e2eproxy "
                    f"process ({row.holder}); its lease expires in {left_s:.1f} s unless renewed"
                )
            await self._sleep(min(backoff, remaining) / 1000)
            backoff = min(backoff * 2, MAX_BACKOFF_MS)

    async def renew(self, account: AccountKey) -> Lease:
        lease = (await self.renew_many([account]))[account]
        if lease is None:
            raise StoreLocked(
                f"lost the lease on {account.user_id}/{account.device_id} to another process"
            )
        return lease

    async def renew_many(self, accounts: list[AccountKey]) -> dict[AccountKey, Lease | None]:
        """Extend every held lease of ``accounts`` in one transaction; None for a lost one."""
        held = {a: self._held[a] for a in accounts if a in self._held}
        now = self._clock.now_ms()

        def renew_all(txn: Txn) -> dict[AccountKey, LeaseRow | None]:
            return {a: extend(txn, a, row, now, self._lease_ms) for a, row in held.items()}

        rows = await self._run(renew_all) if held else {}
        result: dict[AccountKey, Lease | None] = {a: None for a in accounts}
        for account, row in rows.items():
            if row is None:
                self._held.pop(account, None)
            else:
                result[account] = self._granted(account, row)
        return result

    async def unheld(self) -> list[AccountKey]:
        """The stored accounts nobody drives (see ``adoptable``) and this instance does not hold."""
        now = self._clock.now_ms()

        def find(txn: Txn) -> list[AccountKey]:
            return [account for account, row in txn.expired_leases(now)
                    if adoptable(row, self.holder, now)]

        return sorted(a for a in await self._run(find) if a not in self._held)

    async def release(self, account: AccountKey) -> None:
        if self._held.pop(account, None) is not None:
            await self._run(lambda txn: give_back(txn, account, self.holder))

    async def release_all(self) -> None:
        for account in list(self._held):
            await self.release(account)


class _Renews(Protocol):
    async def renew_lease(self, account: AccountKey) -> Lease: ...


async def keep_lease(
    store: _Renews,
    account: AccountKey,
    *,
    every_ms: int = RENEW_EVERY_MS,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Renew a held lease every ``every_ms`` until cancelled; raises ``StoreLocked`` once lost.

    Run it as a task next to the account's worker; when it raises, stop driving the account.
    A renewal that comes back with ``reload`` (someone else held it meanwhile) also counts as
    lost for the running engine: its state is stale.
    """
    while True:
        await sleep(every_ms / 1000)
        lease = await store.renew_lease(account)
        if lease.reload:
            raise StoreLocked(
                f"{account.user_id}/{account.device_id} was driven by another process meanwhile"
            )
