"""To-device messages: per-device inboxes deleted only when a later sync acknowledges them."""

from __future__ import annotations

import asyncio

from tests.support.stub_homeserver import StubHomeserver

from .conftest import Api, Login


async def _send(sender: Api, txn: str, messages: dict) -> None:
    await sender.ok("PUT", f"/sendToDevice/m.test/{txn}", {"messages": messages})


def _contents(sync: dict) -> list[dict]:
    return [e["content"] for e in sync.get("to_device", {}).get("events", [])]


async def test_deleted_only_after_acknowledgement(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    since = (await bob.sync())["next_batch"]
    await _send(alice, "t1", {bob.user_id: {bob.device_id: {"n": 1}}})
    first = await bob.sync(since)
    again = await bob.sync(since)
    assert _contents(first) == _contents(again) == [{"n": 1}]
    event = first["to_device"]["events"][0]
    assert (event["type"], event["sender"]) == ("m.test", alice.user_id)
    acknowledged = await bob.sync(first["next_batch"])
    assert _contents(acknowledged) == []


async def test_unacknowledged_message_survives_initial_sync(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    await _send(alice, "t1", {bob.user_id: {bob.device_id: {"n": 1}}})
    assert _contents(await bob.sync()) == [{"n": 1}]
    assert _contents(await bob.sync()) == [{"n": 1}]


async def test_wildcard_reaches_every_device_and_txn_is_idempotent(
    login: Login, stub: StubHomeserver,
) -> None:
    alice = await login("alice")
    bob_phone = await login("bob")
    bob_laptop = await login("bob")
    for _ in range(2):
        await _send(alice, "same-txn", {bob_phone.user_id: {"*": {"n": 1}}})
    assert _contents(await bob_phone.sync()) == [{"n": 1}]
    assert _contents(await bob_laptop.sync()) == [{"n": 1}]
    assert len(stub.requests_to(r"/sendToDevice/", "PUT")) == 2


async def test_other_device_does_not_receive(login: Login) -> None:
    alice = await login("alice")
    bob_phone = await login("bob")
    bob_laptop = await login("bob")
    await _send(alice, "t1", {bob_phone.user_id: {bob_phone.device_id: {"n": 1}}})
    assert _contents(await bob_laptop.sync()) == []
    assert _contents(await bob_phone.sync()) == [{"n": 1}]


async def test_long_poll_wakes_on_to_device(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    since = (await bob.sync())["next_batch"]
    poll = asyncio.create_task(bob.sync(since, timeout="5000"))
    await asyncio.sleep(0.05)
    await _send(alice, "t1", {bob.user_id: {bob.device_id: {"n": 2}}})
    assert _contents(await asyncio.wait_for(poll, 2)) == [{"n": 2}]
