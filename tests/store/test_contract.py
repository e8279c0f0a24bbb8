"""The ``Store`` contract, run against every backend (memory, SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from e2eproxy.crypto.changes import Changes, ReplayRecord, TrackedUserRecord
from e2eproxy.crypto.clock import ManualClock
from e2eproxy.errors import StoreLocked
from e2eproxy.protocol import api
from e2eproxy.store import memory, postgres, sqlite
from e2eproxy.store.base import TO_DEVICE_HASH_TTL_MS, TXN_TTL_MS
from e2eproxy.store.records import RecordStore
from e2eproxy.types import RoomId, SessionId, UserId

from .conftest import (
    ALICE,
    BOB,
    ROOM,
    StoreFactory,
    account_record,
    full_changes,
    inbound_record,
    megolm_pair,
)


async def test_empty_store(store: RecordStore) -> None:
    assert await store.list_accounts() == []
    assert await store.load_snapshot(ALICE) is None
    assert await store.load_inbound_group_sessions(ALICE, [(ROOM, SessionId("x"))]) == ([], [])
    assert await store.get_sync_token(ALICE, "client") is None
    assert await store.count_inbound_group_sessions(ALICE) == 0


async def test_has_account_answers_for_one_account(store: RecordStore) -> None:
    """What the registry asks for each login and restore, instead of listing (and decrypting)
    every account of the store."""
    assert not await store.has_account(ALICE)
    await store.save(ALICE, Changes(account=account_record()))
    assert await store.has_account(ALICE)
    assert not await store.has_account(BOB)
    await store.delete_account(ALICE)
    assert not await store.has_account(ALICE)


async def test_full_batch_round_trip(store: RecordStore) -> None:
    changes = full_changes()
    await store.save(ALICE, changes)
    snap = await store.load_snapshot(ALICE)
    assert snap is not None
    assert await store.list_accounts() == [ALICE]
    assert snap.account.account.ed25519_key.to_base64() == (
        changes.account.account.ed25519_key.to_base64()  # type: ignore[union-attr]
    )
    assert snap.account.account is not changes.account.account  # type: ignore[union-attr]
    assert len(snap.account.account.one_time_keys) == 5
    assert (snap.account.device_keys_uploaded, snap.account.otk_server_count) == (True, 5)
    [olm] = snap.olm_sessions
    assert olm.session.session_id == changes.olm_sessions[0].session_id
    assert (olm.created_ms, olm.last_used_ms, olm.last_received_ms) == (1, 2, 3)
    [ogs] = snap.outbound_group_sessions
    source = changes.outbound_group_sessions[0]
    assert ogs.session.session_id == source.session.session_id
    assert (ogs.shared_with, ogs.pending_requests, ogs.settings) == (
        source.shared_with,
        source.pending_requests,
        source.settings,
    )
    assert snap.devices == changes.devices
    assert snap.tracked_users == changes.tracked_users
    assert snap.rooms == changes.rooms
    assert snap.withheld == changes.withheld
    assert snap.pending_requests == changes.requests_added
    assert snap.to_device_hashes == changes.to_device_hashes
    assert snap.inbound_group_sessions == [], "inbound sessions are loaded on demand only"


async def test_inbound_sessions_on_demand_with_replay(store: RecordStore) -> None:
    changes = full_changes()
    await store.save(ALICE, changes)
    igs = changes.inbound_group_sessions[0]
    missing = (RoomId("!other:x"), SessionId("nope"))
    found, replays = await store.load_inbound_group_sessions(
        ALICE, [(igs.room_id, igs.session_id), missing]
    )
    assert [r.session_id for r in found] == [igs.session_id]
    assert found[0].session is not igs.session
    assert replays == changes.replay_entries
    assert await store.count_inbound_group_sessions(ALICE) == 1
    other_room = await store.load_inbound_group_sessions(ALICE, [(RoomId("!b:x"), igs.session_id)])
    assert other_room == ([], []), "sessions are keyed by room and session id"


@pytest.mark.parametrize(
    ("stored", "new", "winner"),
    [
        ((0, False), (5, False), "stored"),
        ((5, False), (0, False), "new"),
        ((3, True), (3, False), "new"),  # a direct key upgrades an imported one
        ((3, False), (3, True), "stored"),
        ((3, False), (3, False), "stored"),
    ],
)
async def test_better_session_rule(
    store: RecordStore, stored: tuple[int, bool], new: tuple[int, bool], winner: str
) -> None:
    _, inbound = megolm_pair(advance=6)
    first = inbound_record(inbound, *stored)
    first.sender_key = "STORED"
    second = inbound_record(inbound, *new)
    second.sender_key = "NEW"
    await store.save(ALICE, Changes(inbound_group_sessions=[first]))
    await store.save(ALICE, Changes(inbound_group_sessions=[second]))
    [loaded], _ = await store.load_inbound_group_sessions(ALICE, [(ROOM, first.session_id)])
    expected = first if winner == "stored" else second
    assert loaded.sender_key == expected.sender_key
    assert (loaded.first_known_index, loaded.imported) == (
        expected.first_known_index,
        expected.imported,
    )
    assert loaded.session.first_known_index == expected.first_known_index


async def test_upserts_and_deletes(store: RecordStore) -> None:
    changes = full_changes()
    await store.save(ALICE, changes)
    user = changes.tracked_users[0]
    request = api.keys_query([UserId("@c:x")])
    await store.save(
        ALICE,
        Changes(
            tracked_users=[TrackedUserRecord(user.user_id, False, False, 4)],
            outbound_group_sessions_removed=[ROOM],
            olm_sessions_removed=[changes.olm_sessions[0].session_id],
            withheld_removed=[(w.room_id, w.session_id) for w in changes.withheld],
            requests_added=[request],
            requests_removed=[changes.requests_added[0].id, request.id],
        ),
    )
    snap = await store.load_snapshot(ALICE)
    assert snap is not None
    assert snap.tracked_users == []
    assert snap.outbound_group_sessions == []
    assert snap.olm_sessions == [] and snap.withheld == []
    assert snap.devices == changes.devices, "only what was named is deleted"
    assert snap.pending_requests == [], "added then removed in one batch: gone"


async def test_requests_keep_their_order(store: RecordStore) -> None:
    requests = [api.keys_query([UserId(f"@u{i}:x")]) for i in range(5)]
    await store.save(ALICE, Changes(account=account_record(), requests_added=requests[:3]))
    await store.save(ALICE, Changes(requests_added=requests[3:]))
    snap = await store.load_snapshot(ALICE)
    assert snap is not None and [r.id for r in snap.pending_requests] == [r.id for r in requests]


async def test_accounts_are_isolated_and_deletable(store: RecordStore) -> None:
    await store.save(ALICE, full_changes(), sync_tokens={"client": "s1"})
    await store.save(BOB, full_changes(), sync_tokens={"client": "s2"})
    await store.put_secret(ALICE, "access_token", "syt_alice")
    assert await store.list_accounts() == sorted([ALICE, BOB])
    assert await store.get_sync_token(BOB, "client") == "s2"
    assert await store.get_secret(BOB, "access_token") is None
    await store.delete_account(ALICE)
    assert await store.list_accounts() == [BOB]
    assert await store.load_snapshot(ALICE) is None
    assert await store.get_secret(ALICE, "access_token") is None
    assert await store.get_sync_token(ALICE, "client") is None
    assert await store.load_snapshot(BOB) is not None


async def test_sync_tokens_txns_and_secrets(store: RecordStore) -> None:
    await store.set_sync_token(ALICE, "client", "t1")
    await store.set_sync_token(ALICE, "background", "b1")
    await store.save(ALICE, Changes(), sync_tokens={"client": "t2"}, txns={"r|m|1": {"e": 1}})
    assert await store.get_sync_token(ALICE, "client") == "t2"
    assert await store.get_sync_token(ALICE, "background") == "b1"
    assert await store.get_txn(ALICE, "r|m|1") == {"e": 1}
    await store.put_txn(ALICE, "r|m|2", {"event_id": "$2"})
    assert await store.get_txn(ALICE, "r|m|2") == {"event_id": "$2"}
    assert await store.get_txn(ALICE, "r|m|3") is None
    await store.put_secret(ALICE, "access_token", "syt_secret")
    assert await store.get_secret(ALICE, "access_token") == "syt_secret"
    await store.put_secret(ALICE, "access_token", None)
    assert await store.get_secret(ALICE, "access_token") is None


async def test_pruning_by_age(store: RecordStore, clock: ManualClock) -> None:
    await store.save(ALICE, Changes(account=account_record(), to_device_hashes=["old"]))
    await store.put_txn(ALICE, "old-txn", {"x": 1})
    clock.advance(max(TO_DEVICE_HASH_TTL_MS, TXN_TTL_MS) + 1)
    await store.save(ALICE, Changes(to_device_hashes=["new"]), txns={"new-txn": {"x": 2}})
    snap = await store.load_snapshot(ALICE)
    assert snap is not None and snap.to_device_hashes == ["new"]
    assert await store.get_txn(ALICE, "old-txn") is None
    assert await store.get_txn(ALICE, "new-txn") == {"x": 2}


async def test_iterate_inbound_sessions_in_batches(store: RecordStore) -> None:
    records = [inbound_record(megolm_pair()[1]) for _ in range(7)]
    await store.save(ALICE, Changes(inbound_group_sessions=records))
    batches = [batch async for batch in store.iter_inbound_group_sessions(ALICE, batch_size=3)]
    assert [len(b) for b in batches] == [3, 3, 1]
    ids = [r.session_id for batch in batches for r in batch]
    assert sorted(ids) == sorted(r.session_id for r in records)


async def test_failed_batch_saves_nothing(
    store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.save(ALICE, Changes(account=account_record()), sync_tokens={"client": "t1"})
    txn_class = {
        memory.MemoryBackend: memory.MemoryTxn,
        sqlite.SqliteBackend: sqlite.SqliteTxn,
        postgres.PostgresBackend: postgres.PostgresTxn,
    }[type(store._backend)]
    real_put = txn_class.put
    calls = []

    def failing_put(self: object, acct: int, op: object) -> None:
        calls.append(op)
        if len(calls) == 3:
            raise RuntimeError("writer killed between statements")
        real_put(self, acct, op)  # type: ignore[arg-type]

    monkeypatch.setattr(txn_class, "put", failing_put)
    with pytest.raises(RuntimeError):
        await store.save(ALICE, full_changes(), sync_tokens={"client": "t2"})
    monkeypatch.undo()
    assert len(calls) == 3, "the failure came after two rows were written"
    snap = await store.load_snapshot(ALICE)
    assert snap is not None and snap.olm_sessions == [] and snap.devices == []
    assert await store.get_sync_token(ALICE, "client") == "t1"
    assert await store.count_inbound_group_sessions(ALICE) == 0


async def test_replay_entries_accumulate(store: RecordStore) -> None:
    record = inbound_record(megolm_pair()[1])
    key = (record.room_id, record.session_id)
    entries = [ReplayRecord(ROOM, record.session_id, i, f"$e{i}", i) for i in range(3)]
    await store.save(ALICE, Changes(inbound_group_sessions=[record], replay_entries=entries[:2]))
    await store.save(ALICE, Changes(replay_entries=entries[2:]))
    _, replays = await store.load_inbound_group_sessions(ALICE, [key])
    assert sorted(replays, key=lambda r: r.message_index) == entries


async def test_lease_excludes_a_second_holder(make_store: StoreFactory, clock: ManualClock) -> None:
    first: RecordStore = await make_store()  # type: ignore[misc]
    second: RecordStore = await make_store()  # type: ignore[misc]
    lease = await first.acquire_lease(ALICE)
    assert (lease.generation, lease.reload) == (1, False)
    with pytest.raises(StoreLocked, match="in use by another e2eproxy process"):
        await second.acquire_lease(ALICE, wait_ms=2_000)
    clock.advance(3_000)
    await first.renew_lease(ALICE)
    clock.advance(9_000)
    with pytest.raises(StoreLocked):
        await second.acquire_lease(ALICE)
    await second.acquire_lease(BOB)  # other accounts are free


async def test_expired_lease_is_taken_over_and_fences_the_old_holder(
    make_store: StoreFactory, clock: ManualClock
) -> None:
    first: RecordStore = await make_store()  # type: ignore[misc]
    second: RecordStore = await make_store()  # type: ignore[misc]
    await first.acquire_lease(ALICE)
    await first.save(ALICE, Changes(account=account_record()))
    clock.advance(10_001)  # first stalled past its lease
    taken = await second.acquire_lease(ALICE)
    assert taken.generation == 2
    with pytest.raises(StoreLocked, match="nothing was saved"):
        await first.save(ALICE, Changes(), sync_tokens={"client": "stale"})
    assert await second.get_sync_token(ALICE, "client") is None
    with pytest.raises(StoreLocked, match="lost the lease"):
        await first.renew_lease(ALICE)
    await second.release_lease(ALICE)
    back = await first.acquire_lease(ALICE)
    assert (back.generation, back.reload) == (3, True), "someone else had it: reload"


async def test_a_dead_predecessor_of_the_data_dir_is_not_waited_for(
    make_store: StoreFactory, clock: ManualClock
) -> None:
    """A process that holds its data dir's claim (data_dir_claim.py) takes a lease left under
    its site at once: the process that held it is gone. Other sites are still waited out."""
    crashed: RecordStore = await make_store(site="site-a")  # type: ignore[misc]
    other_site: RecordStore = await make_store(site="site-b")  # type: ignore[misc]
    held = await crashed.acquire_lease(ALICE)
    await crashed.save(ALICE, Changes(account=account_record()))
    await other_site.acquire_lease(BOB)
    clock.advance(1_000)  # the lease has 9 s left
    successor: RecordStore = await make_store(site="site-a")  # type: ignore[misc]
    taken = await successor.acquire_lease(ALICE, wait_ms=0, want=False)
    assert taken.generation == 2 and taken.holder.startswith("site-a/")
    assert taken.holder != held.holder  # a new holder id, under the same site
    with pytest.raises(StoreLocked, match="in use by another e2eproxy process"):
        await successor.acquire_lease(BOB, wait_ms=0, want=False)
    # Had the predecessor lived on (a copied data dir), fencing still keeps it out.
    with pytest.raises(StoreLocked, match="nothing was saved"):
        await crashed.save(ALICE, Changes(), sync_tokens={"client": "stale"})
    # Without a site (an offline command, a test), a live lease is waited out as before.
    plain: RecordStore = await make_store()  # type: ignore[misc]
    with pytest.raises(StoreLocked):
        await plain.acquire_lease(ALICE, wait_ms=0, want=False)


async def test_release_and_reacquire_by_same_holder_keeps_generation(
    store: RecordStore,
) -> None:
    lease = await store.acquire_lease(ALICE)
    await store.release_lease(ALICE)
    again = await store.acquire_lease(ALICE)
    assert (again.generation, again.reload) == (lease.generation, False)


async def test_waiting_acquire_gets_the_lease_when_released(
    make_store: StoreFactory, clock: ManualClock
) -> None:
    first: RecordStore = await make_store()  # type: ignore[misc]

    async def release_on_sleep(seconds: float) -> None:
        clock.advance(int(seconds * 1000))
        await first.release_lease(ALICE)

    second: RecordStore = await make_store(sleep=release_on_sleep)  # type: ignore[misc]
    await first.acquire_lease(ALICE)
    lease = await second.acquire_lease(ALICE, wait_ms=5_000)
    assert lease.holder != (await first.acquire_lease(BOB)).holder
    assert lease.generation == 2


async def test_keep_lease_renews_until_lost(make_store: StoreFactory, clock: ManualClock) -> None:
    from e2eproxy.store.leases import keep_lease

    first: RecordStore = await make_store()  # type: ignore[misc]
    second: RecordStore = await make_store()  # type: ignore[misc]
    await first.acquire_lease(ALICE)
    renewals = 0

    async def tick(seconds: float) -> None:
        nonlocal renewals
        clock.advance(int(seconds * 1000))
        renewals += 1
        if renewals == 5:  # a stall longer than the lease, and another process takes over
            clock.advance(20_000)
            await second.acquire_lease(ALICE)

    with pytest.raises(StoreLocked):
        await keep_lease(first, ALICE, sleep=tick)
    assert renewals == 5, "renewed every period, kept the lease through 4 periods"
