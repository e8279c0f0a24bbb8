"""The fault matrix, sending (issue 13, item 1): each step of a send into an encrypted room meets
each fault, and in every cell the client gets a Matrix error or a (possibly delayed) success,
the server never holds plaintext, the other member reads every event that was acknowledged,
one txn id is one event however often the client retries it, and once the fault is gone the
next send works, with no restart. The README's "Fault matrix" table is this file's EXPECTED."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import StartE2EEProxy
from tests.support.fault_matrix import FAULTS, RETRY_AFTER_MS, World, make_world, outcome
from tests.support.plain_client import upload_media
from tests.support.stub_homeserver import StubHomeserver
from tests.support.wire import assert_ciphertext_only, raw_messages

# Step -> (path, method) of the request to the homeserver that it makes.
STEPS = {
    "encryption state": (r"/state/m\.room\.encryption", "GET"),
    "keys/query": (r"/keys/query$", "POST"),
    "keys/claim": (r"/keys/claim$", "POST"),
    "to-device": (r"/sendToDevice/", "PUT"),
    "event send": (r"/send/m\.room\.encrypted/", "PUT"),
    "upload publish": (r"/_matrix/media/v3/upload", None),
}
# (step, fault) -> what the client is answered while the fault lasts. A 429 is always waited
# out (as long as it asks) and retried: a delayed success. The homeserver's own 5xx on the
# encryption state, the event and the file comes back as it was; a timeout is 504 and a reset
# connection 502; a failed key share (query, claim or to-device) is 502 with nothing sent.
_HOMESERVER = {"500": "500 M_UNKNOWN", "502": "502 M_UNKNOWN", "timeout": "504 M_UNKNOWN",
               "reset": "502 M_UNKNOWN"}
_KEY_SHARE = dict.fromkeys(("500", "502", "timeout", "reset"), "502 M_UNKNOWN")
EXPECTED: dict[tuple[str, str], str] = {
    **{(step, "429"): "200" for step in STEPS},
    **{(step, f): seen for step in ("encryption state", "event send", "upload publish")
       for f, seen in _HOMESERVER.items()},
    **{(step, f): seen for step in ("keys/query", "keys/claim", "to-device")
       for f, seen in _KEY_SHARE.items()},
}
CELLS = [(step, fault) for step in STEPS for fault in FAULTS]


def _content(step: str, mxc: str | None, text: str) -> dict[str, Any]:
    if step == "upload publish":
        assert mxc is not None
        return {"msgtype": "m.file", "body": text, "url": mxc}
    return {"msgtype": "m.text", "body": text}


async def _bob_reads(world: World, event_id: str, body: str) -> None:
    seen = await world.bob.wait_for_event(world.room_id, event_id)
    assert seen["type"] == "m.room.message", seen
    assert seen["content"].get("body") == body, seen


@pytest.mark.parametrize(("step", "fault"), CELLS)
async def test_send_step_fault(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
    step: str, fault: str,
) -> None:
    world = await make_world(stub, session, start_e2ee_proxy)
    alice, room_id = world.alice, world.room_id
    mxc = await upload_media(alice, b"file bytes") if step == "upload publish" else None
    path, method = STEPS[step]
    injected = world.inject(path, method, fault) if method else world.stub.faults.add(
        path, **FAULTS[fault])
    content = _content(step, mxc, "under the fault")
    status, answer = await alice.send_raw(room_id, content, txn="txn-fault")
    world.clear(injected)
    assert injected.hits >= 1, "the step never met its fault"
    assert outcome(status, answer) == EXPECTED[(step, fault)], answer
    assert_ciphertext_only(stub.raw_events(room_id))
    if status != 200 and fault != "timeout":  # a late answer: the work may be done
        assert raw_messages(stub.raw_events(room_id)) == []

    # The client retries the same txn: one event, the one it was told about if it was.
    event_id = await alice.send(room_id, content, txn="txn-fault")
    if status == 200:
        assert answer["event_id"] == event_id
        if fault == "429":
            assert RETRY_AFTER_MS / 1000 in world.timer.slept
    sent = raw_messages(stub.raw_events(room_id))
    assert [e["event_id"] for e in sent] == [event_id]

    await _recovered(world, event_id, content["body"])


async def _recovered(world: World, event_id: str, body: str) -> None:
    """No restart: the next send works, one event each, and Bob reads both."""
    later = await world.alice.send_text(world.room_id, "after", txn="txn-after")
    raw = world.stub.raw_events(world.room_id)
    assert_ciphertext_only(raw)
    assert [e["event_id"] for e in raw_messages(raw)] == [event_id, later]
    await _bob_reads(world, event_id, body)
    await _bob_reads(world, later, "after")


# Alice's first send commits: the room's encryption state, its members, the query, claim and
# to-device steps and each one's answer, the ciphertext under the txn, the server's answer.
SAVES_IN_A_FIRST_SEND = 10


@pytest.mark.parametrize("nth", range(1, SAVES_IN_A_FIRST_SEND + 1))
async def test_send_store_commit_fails(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
    nth: int,
) -> None:
    """The store fails one commit of Alice's first send: the client gets an error and nothing
    is sent (or, for the last, the send went out whole); the retry of the txn is one event,
    and the proxy goes on with no restart (its engine rebuilt from the store)."""
    world = await make_world(stub, session, start_e2ee_proxy)
    alice, room_id = world.alice, world.room_id
    world.store.fail_save(world.key_of(alice), nth)
    content = {"msgtype": "m.text", "body": "while the disk was full"}
    status, answer = await alice.send_raw(room_id, content, txn="txn-fault")
    assert world.store.failed == 1, "the store never failed"
    # The last commit keeps the server's answer under the txn, after the event went out.
    assert outcome(status, answer) == ("200" if nth == SAVES_IN_A_FIRST_SEND else
                                       "500 M_UNKNOWN"), answer
    assert_ciphertext_only(stub.raw_events(room_id))
    if status != 200:
        assert raw_messages(stub.raw_events(room_id)) == []
    event_id = await alice.send(room_id, content, txn="txn-fault")
    if status == 200:
        assert answer["event_id"] == event_id
    assert [e["event_id"] for e in raw_messages(stub.raw_events(room_id))] == [event_id]
    await _recovered(world, event_id, content["body"])

