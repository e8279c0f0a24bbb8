"""/sync: since tokens, long-polling, filters, full_state, transaction ids, account data."""

from __future__ import annotations

import asyncio
import json
import time

from tests.support.stub_homeserver import StubHomeserver

from .conftest import Api, Login


async def _room_with(alice: Api, bob: Api | None = None) -> str:
    body = {"invite": [bob.user_id]} if bob else {}
    room_id: str = (await alice.ok("POST", "/createRoom", body))["room_id"]
    if bob:
        await bob.ok("POST", f"/join/{room_id}", {})
    return room_id


async def _send(api: Api, room_id: str, text: str, txn: str) -> str:
    result = await api.ok("PUT", f"/rooms/{room_id}/send/m.room.message/{txn}",
                          {"msgtype": "m.text", "body": text})
    return str(result["event_id"])


def _bodies(sync: dict, room_id: str) -> list[str]:
    events = sync["rooms"]["join"][room_id]["timeline"]["events"]
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


async def test_initial_sync_has_room_state_and_timeline(login: Login) -> None:
    alice = await login("alice")
    room_id = await _room_with(alice)
    await _send(alice, room_id, "hello", "t1")
    sync = await alice.sync()
    room = sync["rooms"]["join"][room_id]
    assert _bodies(sync, room_id) == ["hello"]
    state_types = {e["type"] for e in room["state"]["events"]}
    timeline_types = {e["type"] for e in room["timeline"]["events"]}
    assert "m.room.create" in state_types | timeline_types
    assert sync["next_batch"].startswith("s")


async def test_incremental_sync_returns_only_new_events(login: Login) -> None:
    alice = await login("alice")
    room_id = await _room_with(alice)
    await _send(alice, room_id, "old", "t1")
    first = await alice.sync()
    await _send(alice, room_id, "new", "t2")
    second = await alice.sync(first["next_batch"])
    assert _bodies(second, room_id) == ["new"]
    third = await alice.sync(second["next_batch"])
    assert "rooms" not in third


async def test_long_poll_wakes_on_new_event(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    room_id = await _room_with(alice, bob)
    since = (await bob.sync())["next_batch"]
    poll = asyncio.create_task(bob.sync(since, timeout="5000"))
    await asyncio.sleep(0.1)
    assert not poll.done()
    await _send(alice, room_id, "wake up", "t1")
    sync = await asyncio.wait_for(poll, 2)
    assert _bodies(sync, room_id) == ["wake up"]


async def test_long_poll_times_out_empty(login: Login) -> None:
    alice = await login("alice")
    since = (await alice.sync())["next_batch"]
    started = time.monotonic()
    sync = await alice.sync(since, timeout="300")
    assert time.monotonic() - started >= 0.25
    assert sync["next_batch"] == since and "rooms" not in sync


async def test_inline_filter_limits_and_types(login: Login) -> None:
    alice = await login("alice")
    room_id = await _room_with(alice)
    since = (await alice.sync())["next_batch"]
    for i in range(5):
        await _send(alice, room_id, f"m{i}", f"t{i}")
    await alice.ok("PUT", f"/rooms/{room_id}/state/m.room.topic/", {"topic": "t"})
    flt = {"room": {"timeline": {"limit": 2, "types": ["m.room.message"]}}}
    sync = await alice.sync(since, filter=json.dumps(flt))
    timeline = sync["rooms"]["join"][room_id]["timeline"]
    assert _bodies(sync, room_id) == ["m3", "m4"]
    assert timeline["limited"] is True
    page = await alice.ok("GET", f"/rooms/{room_id}/messages",
                          params={"from": timeline["prev_batch"], "dir": "b", "limit": "1"})
    assert page["chunk"][0]["content"]["body"] == "m2"


async def test_filter_by_id_and_not_types(login: Login) -> None:
    alice = await login("alice")
    room_id = await _room_with(alice)
    created = await alice.ok("POST", f"/user/{alice.user_id}/filter",
                             {"room": {"timeline": {"not_types": ["m.room.message"]}}})
    stored = await alice.ok("GET", f"/user/{alice.user_id}/filter/{created['filter_id']}")
    assert stored["room"]["timeline"]["not_types"] == ["m.room.message"]
    since = (await alice.sync())["next_batch"]
    await _send(alice, room_id, "hidden", "t1")
    await alice.ok("PUT", f"/rooms/{room_id}/state/m.room.name/", {"name": "N"})
    sync = await alice.sync(since, filter=created["filter_id"])
    types = [e["type"] for e in sync["rooms"]["join"][room_id]["timeline"]["events"]]
    assert types == ["m.room.name"]


async def test_full_state_returns_state_on_incremental(login: Login) -> None:
    alice = await login("alice")
    room_id = await _room_with(alice)
    since = (await alice.sync())["next_batch"]
    await _send(alice, room_id, "x", "t1")
    plain = await alice.sync(since)
    assert plain["rooms"]["join"][room_id]["state"]["events"] == []
    full = await alice.sync(since, full_state="true")
    types = {e["type"] for e in full["rooms"]["join"][room_id]["state"]["events"]}
    assert {"m.room.create", "m.room.power_levels", "m.room.member"} <= types


async def test_transaction_id_only_for_sending_device(login: Login) -> None:
    phone = await login("alice")
    laptop = await login("alice")
    room_id = await _room_with(phone)
    await _send(phone, room_id, "mine", "txn-42")
    own = (await phone.sync())["rooms"]["join"][room_id]["timeline"]["events"][-1]
    other = (await laptop.sync())["rooms"]["join"][room_id]["timeline"]["events"][-1]
    assert own["unsigned"]["transaction_id"] == "txn-42"
    assert "transaction_id" not in other["unsigned"]


async def test_invite_appears_then_join(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    since = (await bob.sync())["next_batch"]
    room_id = (await alice.ok("POST", "/createRoom",
                              {"invite": [bob.user_id], "is_direct": True,
                               "name": "secret"}))["room_id"]
    sync = await bob.sync(since, timeout="1000")
    invite_state = sync["rooms"]["invite"][room_id]["invite_state"]["events"]
    member = next(e for e in invite_state if e["type"] == "m.room.member")
    assert member["content"] == {"membership": "invite", "is_direct": True}
    await bob.ok("POST", f"/rooms/{room_id}/join", {})
    joined = await bob.sync(sync["next_batch"])
    assert room_id in joined["rooms"]["join"]


async def test_leave_appears_in_rooms_leave(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    room_id = await _room_with(alice, bob)
    since = (await bob.sync())["next_batch"]
    await bob.ok("POST", f"/rooms/{room_id}/leave", {})
    sync = await bob.sync(since)
    events = sync["rooms"]["leave"][room_id]["timeline"]["events"]
    assert events[-1]["content"]["membership"] == "leave"
    assert room_id not in sync["rooms"].get("join", {})


async def test_account_data_in_sync(login: Login, stub: StubHomeserver) -> None:
    alice = await login("alice")
    room_id = await _room_with(alice)
    since = (await alice.sync())["next_batch"]
    await alice.ok("PUT", f"/user/{alice.user_id}/account_data/m.direct", {"@b:x": [room_id]})
    await alice.ok("PUT", f"/user/{alice.user_id}/rooms/{room_id}/account_data/m.tag",
                   {"tags": {}})
    sync = await alice.sync(since)
    assert sync["account_data"]["events"] == [{"type": "m.direct",
                                               "content": {"@b:x": [room_id]}}]
    room_data = sync["rooms"]["join"][room_id]["account_data"]["events"]
    assert room_data == [{"type": "m.tag", "content": {"tags": {}}}]
    assert (await alice.ok("GET", f"/user/{alice.user_id}/account_data/m.direct")) == {
        "@b:x": [room_id]}
    status, body = await alice.call("GET", f"/user/{alice.user_id}/account_data/nope")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


async def test_logged_out_sync_is_401(login: Login) -> None:
    alice = await login("alice")
    since = (await alice.sync())["next_batch"]
    await alice.ok("POST", "/logout")
    status, body = await alice.call("GET", "/sync", params={"since": since})
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
