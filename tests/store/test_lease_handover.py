"""Leases between instances, on every backend: a renewal never takes back a lease that was
taken over (even when given back since), several leases renew in one transaction, and an
instance waiting for an account marks it wanted so its holder hands it over."""

from __future__ import annotations

import pytest

from e2eproxy.crypto.changes import Changes
from e2eproxy.crypto.clock import ManualClock
from e2eproxy.errors import StoreLocked
from e2eproxy.store.base import AccountKey
from e2eproxy.store.records import RecordStore
from tests.store.conftest import ALICE, BOB, StoreFactory


async def test_a_renewal_never_takes_back_a_lease_taken_over_meanwhile(
    make_store: StoreFactory, clock: ManualClock
) -> None:
    first: RecordStore = await make_store()  # type: ignore[misc]
    second: RecordStore = await make_store()  # type: ignore[misc]
    await first.acquire_lease(ALICE)
    clock.advance(10_001)  # first paused past its lease
    await second.acquire_lease(ALICE)  # ... and second drove the account meanwhile
    await second.release_lease(ALICE)  # then let it go: the row is free and expired
    assert await first.renew_leases([ALICE]) == {ALICE: None}  # lost, not taken back
    back = await first.acquire_lease(ALICE)  # only a fresh acquire (with a reload) gets it
    assert back.reload


async def test_several_leases_renew_in_one_call(make_store: StoreFactory,
                                                clock: ManualClock) -> None:
    store: RecordStore = await make_store()  # type: ignore[misc]
    other: RecordStore = await make_store()  # type: ignore[misc]
    await store.acquire_lease(ALICE)
    await store.acquire_lease(BOB)
    clock.advance(9_000)
    renewed = await store.renew_leases([ALICE, BOB])
    assert {a: (lease is not None and not lease.wanted) for a, lease in renewed.items()} == {
        ALICE: True, BOB: True}
    clock.advance(10_001)  # past both leases: an expired lease nobody took is still ours
    assert (await store.renew_leases([ALICE]))[ALICE] is not None
    assert (await other.acquire_lease(BOB)).generation == 2  # not renewed: expired


async def test_a_waiting_instance_gets_the_account_handed_over(
    make_store: StoreFactory, clock: ManualClock
) -> None:
    holder: RecordStore = await make_store()  # type: ignore[misc]
    renewals: list[bool] = []

    async def while_waiting(seconds: float) -> None:
        # The holder renews while the other instance waits; it hands over when asked to.
        clock.advance(int(seconds * 1000))
        lease = (await holder.renew_leases([ALICE]))[ALICE]
        renewals.append(bool(lease and lease.wanted))
        if lease is not None and lease.wanted:
            await holder.release_lease(ALICE)

    waiting: RecordStore = await make_store(sleep=while_waiting)  # type: ignore[misc]
    await holder.acquire_lease(ALICE)
    got = await waiting.acquire_lease(ALICE, wait_ms=5_000)
    assert renewals[-1] is True, "the holder saw the account wanted"
    assert got.generation == 2 and got.reload is False
    assert await holder.renew_leases([ALICE]) == {ALICE: None}


async def test_giving_up_the_wait_withdraws_the_want(
    make_store: StoreFactory, clock: ManualClock
) -> None:
    holder: RecordStore = await make_store()  # type: ignore[misc]
    waiting: RecordStore = await make_store()  # type: ignore[misc]
    await holder.acquire_lease(ALICE)
    with pytest.raises(StoreLocked):
        await waiting.acquire_lease(ALICE, wait_ms=100)
    lease = (await holder.renew_leases([ALICE]))[ALICE]
    assert lease is not None and lease.wanted is False


async def test_a_lease_taken_only_if_free_leaves_a_live_holder_alone(
    make_store: StoreFactory, clock: ManualClock
) -> None:
    holder: RecordStore = await make_store()  # type: ignore[misc]
    starting: RecordStore = await make_store()  # type: ignore[misc]
    await holder.acquire_lease(ALICE)
    with pytest.raises(StoreLocked):
        await starting.acquire_lease(ALICE, want=False)
    lease = (await holder.renew_leases([ALICE]))[ALICE]
    assert lease is not None and lease.wanted is False  # not asked to hand it over
    clock.advance(10_001)  # the holder died
    assert (await starting.acquire_lease(ALICE, want=False)).generation == 2


async def test_unheld_accounts_are_those_nobody_drives_or_waits_for(
    make_store: StoreFactory, clock: ManualClock
) -> None:
    first: RecordStore = await make_store()  # type: ignore[misc]
    second: RecordStore = await make_store()  # type: ignore[misc]
    for account in (ALICE, BOB):
        await first.save(account, Changes())  # a stored account (its lease row comes next)
        await first.acquire_lease(account)
    assert await first.unheld_accounts() == []
    assert await second.unheld_accounts() == []  # both driven by a live instance
    await first.release_lease(ALICE)  # stopped cleanly (or handed over, see below)
    assert await second.unheld_accounts() == [ALICE]
    assert await first.unheld_accounts() == [ALICE]  # let go: first may take it back too
    clock.advance(10_001)  # first died: its last lease runs out unrenewed
    assert await second.unheld_accounts() == [ALICE, BOB]
    # A third instance waits for Bob (a request for him reached it) while his new holder
    # dies: he is not up for grabs, the third instance gets him.
    await second.acquire_lease(BOB)
    seen: list[list[AccountKey]] = []

    async def meanwhile(seconds: float) -> None:
        clock.advance(10_001)
        seen.append(await first.unheld_accounts())

    third: RecordStore = await make_store(sleep=meanwhile)  # type: ignore[misc]
    assert (await third.acquire_lease(BOB, wait_ms=20_000)).holder != "nobody"
    assert seen == [[ALICE]]
    await first.delete_account(ALICE)  # logged out: gone from the store, lease and all
    assert await second.unheld_accounts() == []
