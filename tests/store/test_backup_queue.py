"""The backup queue, on every backend: new inbound sessions wait for upload in the same
transaction that saves them, leave the queue only when marked backed up, restored ones never
enter it, and a new backup version queues everything again."""

from __future__ import annotations

import dataclasses

from e2eproxy.crypto.changes import Changes
from e2eproxy.store.records import RecordStore
from tests.store.conftest import (
    ALICE,
    ROOM,
    StoreFactory,
    account_record,
    inbound_record,
    megolm_pair,
)


async def _store_with(make_store: StoreFactory, count: int) -> tuple[RecordStore, list[str]]:
    store: RecordStore = await make_store()
    records = [inbound_record(megolm_pair()[1]) for _ in range(count)]
    await store.save(ALICE, Changes(account=account_record(), inbound_group_sessions=records))
    return store, [r.session_id for r in records]


async def test_new_sessions_wait_until_marked_backed_up(make_store: StoreFactory) -> None:
    store, ids = await _store_with(make_store, 5)
    assert await store.backup_queue_size(ALICE) == 5
    batch = await store.backup_batch(ALICE, 3)
    assert len(batch) == 3 and {r.session_id for r in batch} <= set(ids)
    # A batch is only a read: a crash before the server's answer uploads it again.
    assert await store.backup_queue_size(ALICE) == 5
    await store.mark_backed_up(ALICE, [(r.room_id, r.session_id) for r in batch])
    rest = await store.backup_batch(ALICE, 10)
    assert {r.session_id for r in rest} == set(ids) - {r.session_id for r in batch}
    await store.mark_backed_up(ALICE, [(r.room_id, r.session_id) for r in rest])
    assert await store.backup_batch(ALICE, 10) == []


async def test_restored_sessions_are_not_queued_and_a_new_version_queues_all(
    make_store: StoreFactory,
) -> None:
    store, ids = await _store_with(make_store, 2)
    await store.mark_backed_up(ALICE, [(ROOM, s) for s in ids])
    restored = dataclasses.replace(inbound_record(megolm_pair()[1]), backed_up=True,
                                   imported=True)
    await store.save(ALICE, Changes(inbound_group_sessions=[restored]))
    assert await store.backup_queue_size(ALICE) == 0
    assert await store.queue_all_for_backup(ALICE) == 3
    assert await store.backup_queue_size(ALICE) == 3


async def test_a_queued_session_that_is_gone_leaves_the_queue(make_store: StoreFactory) -> None:
    store, _ids = await _store_with(make_store, 1)
    await store.delete_account(ALICE)
    assert await store.backup_batch(ALICE, 10) == []
    assert await store.backup_queue_size(ALICE) == 0
