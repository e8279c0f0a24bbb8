"""What the homeserver answers a /sync with, however odd, neither breaks the client's syncs for
good nor lets it acknowledge room keys the engine never saw (issue 13, item 4; the fuzzing of
the parsers behind this is in tests/unit/test_fuzz_parsers.py)."""

from __future__ import annotations

import aiohttp
import pytest

from tests.integration.conftest import StartE2EEProxy, proxied
from tests.support.plain_client import V3, direct
from tests.support.stub_homeserver import StubHomeserver
from tests.support.wire import encryption_state, raw_messages


async def test_an_event_with_a_lone_surrogate_reaches_the_client(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """JSON can carry "\\ud800", which has no UTF-8 form: a room member's message with one made
    every /sync from that position fail with 500 (the proxy wrote its rewritten body as UTF-8)."""
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await alice.create_room(invite=[bob.user_id])
    await bob.join(room_id)
    await bob.sync()
    status, _ = await direct(alice, stub).send_raw(room_id, {"msgtype": "m.text",
                                                              "body": "odd \ud800 text"})
    assert status == 200
    body = await bob.sync()
    [message] = [e for e in body["rooms"]["join"][room_id]["timeline"]["events"]
                 if e["type"] == "m.room.message"]
    assert message["content"]["body"] == "odd \ud800 text"


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b"[]", b"{nope"])
async def test_a_sync_answer_the_proxy_cannot_read_is_not_passed_on(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
    raw: bytes,
) -> None:
    """Passed on unread, the client could take it and move its position on, and the room keys
    the server deletes then would be lost: the client gets a 502, and its next sync works."""
    _, (bob,) = await proxied(stub, session, start_e2ee_proxy, "bob")
    await bob.sync()
    stub.faults.add(r"/sync$", method="GET", raw=raw, times=1,
                    query_regex=r"^(?!.*set_presence=offline)")
    status, body = await bob.request("GET", f"{V3}/sync",
                                     params={"since": bob.next_batch or "", "timeout": "0"})
    assert (status, body["errcode"]) == (502, "M_UNKNOWN"), body
    await bob.sync()


async def test_an_answer_too_deep_to_read_is_the_homeservers_failure(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """An answer to a request of the proxy's own (is this room encrypted?) nested past what the
    parser takes was an internal error (500); it is the homeserver's failure, nothing sent."""
    _, (alice,) = await proxied(stub, session, start_e2ee_proxy, "alice")
    room_id = stub.create_room(alice.user_id, initial_state=[encryption_state()])
    stub.faults.add(r"/state/m\.room\.encryption", method="GET",
                    raw=b"[" * 100_000 + b"]" * 100_000)
    status, body = await alice.send_raw(room_id, {"msgtype": "m.text", "body": "secret"})
    assert (status, body["errcode"]) == (502, "M_UNKNOWN"), body
    assert raw_messages(stub.raw_events(room_id)) == []
