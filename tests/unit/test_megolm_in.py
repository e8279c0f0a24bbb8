"""The better-copy rule for inbound group sessions and the LRU cache."""

from __future__ import annotations

from dataclasses import replace

import vodozemac

from e2eproxy.crypto.changes import ChangeLog, InboundGroupSessionRecord
from e2eproxy.crypto.megolm_in import InboundSessions, is_better
from e2eproxy.types import RoomId, SessionId

ROOM = RoomId("!r:test")


def _copies() -> tuple[InboundGroupSessionRecord, InboundGroupSessionRecord]:
    outbound = vodozemac.GroupSession()
    key0 = outbound.session_key
    outbound.encrypt(b"x")
    key1 = outbound.session_key
    base = InboundGroupSessionRecord(
        ROOM, SessionId(outbound.session_id), "curve", "ed",
        vodozemac.InboundGroupSession(key0), False, False, 0,
    )
    later = replace(base, session=vodozemac.InboundGroupSession(key1), first_known_index=1)
    return base, later


def test_lower_index_replaces_higher_never_the_reverse() -> None:
    best, worse = _copies()
    assert is_better(best, worse)
    assert not is_better(worse, best)
    assert not is_better(best, best)
    store = InboundSessions(ChangeLog())
    assert store.add(worse, known_absent=True)
    assert store.add(best)
    assert not store.add(worse)
    record = store.get(ROOM, best.session_id)
    assert record is not None and record.first_known_index == 0


def test_copy_with_other_sender_keys_or_ratchet_is_rejected() -> None:
    best, worse = _copies()
    assert not is_better(replace(best, signing_key="other"), worse)
    assert not is_better(replace(best, sender_key="other"), worse)
    unrelated = vodozemac.GroupSession()
    foreign = replace(best, session=vodozemac.InboundGroupSession(unrelated.session_key))
    assert not is_better(foreign, worse)


def test_lru_evicts_least_recently_used() -> None:
    store = InboundSessions(ChangeLog(), capacity=2)
    records = []
    for _ in range(3):
        session = vodozemac.GroupSession()
        record = InboundGroupSessionRecord(
            ROOM, SessionId(session.session_id), "c", "e",
            vodozemac.InboundGroupSession(session.session_key), False, False, 0,
        )
        records.append(record)
    store.load(records[:2])
    assert store.get(ROOM, records[0].session_id) is not None  # touch the first
    store.load(records[2:])
    assert store.get(ROOM, records[1].session_id) is None
    assert store.get(ROOM, records[0].session_id) is not None
    assert len(store) == 2
