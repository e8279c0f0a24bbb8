"""KeyedLocks: one key at a time, other keys free, and nothing left behind."""

from __future__ import annotations

import asyncio

from e2eproxy.proxy.keyed_locks import KeyedLocks


async def test_one_holder_per_key_others_free_and_no_lock_left_behind() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    order: list[str] = []
    release = asyncio.Event()

    async def hold(key: str, name: str, wait: bool) -> None:
        async with locks.hold(key):
            order.append(f"{name} in")
            if wait:
                await release.wait()
            order.append(f"{name} out")

    first = asyncio.create_task(hold("alice", "first", wait=True))
    await asyncio.sleep(0)
    second = asyncio.create_task(hold("alice", "second", wait=False))
    await hold("bob", "bob", wait=False)  # not behind alice's holder
    assert order == ["first in", "bob in", "bob out"]
    assert len(locks) == 1  # alice's, held and waited for
    release.set()
    await asyncio.gather(first, second)
    assert order[3:] == ["first out", "second in", "second out"]
    assert len(locks) == 0


async def test_a_cancelled_waiter_leaves_no_lock_behind() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    async with locks.hold("alice"):
        waiter = asyncio.create_task(locks.hold("alice").__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    assert len(locks) == 0
