"""Rooms: create/invite/join/leave/kick, state, send (idempotent), reads and permissions."""

from __future__ import annotations

from tests.support.stub_homeserver import StubHomeserver

from .conftest import Api, Login

ENCRYPTION = {"type": "m.room.encryption", "state_key": "",
              "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


async def _pair(login: Login) -> tuple[Api, Api, str]:
    alice = await login("alice")
    bob = await login("bob")
    room_id = (await alice.ok("POST", "/createRoom", {
        "preset": "private_chat", "name": "Room", "invite": [bob.user_id],
        "initial_state": [ENCRYPTION]}))["room_id"]
    await bob.ok("POST", f"/rooms/{room_id}/join", {})
    return alice, bob, room_id


async def _send(api: Api, room_id: str, content: dict, txn: str) -> str:
    result = await api.ok("PUT", f"/rooms/{room_id}/send/m.room.message/{txn}", content)
    return str(result["event_id"])


async def test_create_room_state_and_members(login: Login, stub: StubHomeserver) -> None:
    alice, bob, room_id = await _pair(login)
    assert await alice.ok("GET", f"/rooms/{room_id}/state/m.room.encryption/") == {
        "algorithm": "m.megolm.v1.aes-sha2"}
    assert (await bob.ok("GET", f"/rooms/{room_id}/state/m.room.name"))["name"] == "Room"
    status, body = await alice.call("GET", f"/rooms/{room_id}/state/m.room.topic/")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    joined = await alice.ok("GET", f"/rooms/{room_id}/joined_members")
    assert set(joined["joined"]) == {alice.user_id, bob.user_id}
    members = await alice.ok("GET", f"/rooms/{room_id}/members")
    assert {e["state_key"] for e in members["chunk"]} == {alice.user_id, bob.user_id}
    state = await alice.ok("GET", f"/rooms/{room_id}/state")
    assert any(e["type"] == "m.room.encryption" for e in state)
    assert (await bob.ok("GET", "/joined_rooms"))["joined_rooms"] == [room_id]
    assert stub.raw_events(room_id)[0]["type"] == "m.room.create"


async def test_send_is_idempotent_per_device_and_txn(login: Login, stub: StubHomeserver) -> None:
    alice, _, room_id = await _pair(login)
    first = await _send(alice, room_id, {"msgtype": "m.text", "body": "a"}, "txn1")
    again = await _send(alice, room_id, {"msgtype": "m.text", "body": "a"}, "txn1")
    via_r0 = await alice.ok("PUT", f"/_matrix/client/r0/rooms/{room_id}/send/m.room.message/txn1",
                            {"msgtype": "m.text", "body": "a"})
    assert first == again == via_r0["event_id"]
    other_device = await login("alice")
    assert await _send(other_device, room_id, {"body": "a"}, "txn1") != first
    bodies = [e["content"].get("body") for e in stub.raw_events(room_id)
              if e["type"] == "m.room.message"]
    assert bodies == ["a", "a"]


async def test_non_members_are_forbidden(login: Login) -> None:
    _, _, room_id = await _pair(login)
    eve = await login("eve")
    for method, path, body in [
        ("PUT", f"/rooms/{room_id}/send/m.room.message/t", {"body": "x"}),
        ("GET", f"/rooms/{room_id}/messages", None),
        ("GET", f"/rooms/{room_id}/state", None),
        ("POST", f"/rooms/{room_id}/join", {}),
    ]:
        status, result = await eve.call(method, path, body)
        assert (status, result["errcode"]) == (403, "M_FORBIDDEN"), path


async def test_power_levels_guard_state(login: Login) -> None:
    alice, bob, room_id = await _pair(login)
    status, _ = await bob.call("PUT", f"/rooms/{room_id}/state/m.room.name/", {"name": "x"})
    assert status == 403
    await alice.ok("PUT", f"/rooms/{room_id}/state/m.room.name/", {"name": "x"})


async def test_messages_pagination_both_directions(login: Login) -> None:
    alice, _, room_id = await _pair(login)
    for i in range(4):
        await _send(alice, room_id, {"body": f"m{i}"}, f"t{i}")
    flt = '{"types": ["m.room.message"]}'
    back = await alice.ok("GET", f"/rooms/{room_id}/messages",
                          params={"dir": "b", "limit": "3", "filter": flt})
    assert [e["content"]["body"] for e in back["chunk"]] == ["m3", "m2", "m1"]
    rest = await alice.ok("GET", f"/rooms/{room_id}/messages",
                          params={"dir": "b", "from": back["end"], "filter": flt})
    assert [e["content"]["body"] for e in rest["chunk"]] == ["m0"]
    assert "end" not in rest
    forward = await alice.ok("GET", f"/rooms/{room_id}/messages",
                             params={"dir": "f", "from": rest["start"], "filter": flt})
    assert [e["content"]["body"] for e in forward["chunk"]] == ["m1", "m2", "m3"]
    everything = await alice.ok("GET", f"/rooms/{room_id}/messages",
                                params={"dir": "f", "limit": "100"})
    assert everything["chunk"][0]["type"] == "m.room.create"
    assert all(e["room_id"] == room_id for e in everything["chunk"])


async def test_context_event_and_relations(login: Login) -> None:
    alice, bob, room_id = await _pair(login)
    before = await _send(alice, room_id, {"body": "before"}, "t0")
    root = await _send(alice, room_id, {"body": "root"}, "t1")
    reply = await _send(bob, room_id, {"body": "in thread", "m.relates_to": {
        "rel_type": "m.thread", "event_id": root}}, "t2")
    edit = await _send(alice, room_id, {"body": "* root", "m.relates_to": {
        "rel_type": "m.replace", "event_id": root}}, "t3")
    ctx = await bob.ok("GET", f"/rooms/{room_id}/context/{root}", params={"limit": "2"})
    assert ctx["event"]["event_id"] == root
    assert [e["event_id"] for e in ctx["events_before"]] == [before]
    assert [e["event_id"] for e in ctx["events_after"]] == [reply]
    assert (await bob.ok("GET", f"/rooms/{room_id}/event/{reply}"))["sender"] == bob.user_id
    rel = "/_matrix/client/v1/rooms/" + room_id + "/relations/" + root
    everything = await bob.ok("GET", rel)
    assert [e["event_id"] for e in everything["chunk"]] == [edit, reply]
    threads = await bob.ok("GET", rel + "/m.thread")
    assert [e["event_id"] for e in threads["chunk"]] == [reply]
    typed = await bob.ok("GET", rel + "/m.replace/m.room.message", params={"limit": "1"})
    assert [e["event_id"] for e in typed["chunk"]] == [edit]
    status, body = await bob.call("GET", f"/rooms/{room_id}/event/$missing")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


async def test_leave_stops_reading_new_events(login: Login) -> None:
    alice, bob, room_id = await _pair(login)
    seen = await _send(alice, room_id, {"body": "seen"}, "t1")
    await bob.ok("POST", f"/rooms/{room_id}/leave", {})
    unseen = await _send(alice, room_id, {"body": "unseen"}, "t2")
    page = await bob.ok("GET", f"/rooms/{room_id}/messages", params={"dir": "b"})
    ids = [e["event_id"] for e in page["chunk"]]
    assert seen in ids and unseen not in ids
    status, _ = await bob.call("PUT", f"/rooms/{room_id}/send/m.room.message/t3", {"body": "x"})
    assert status == 403


async def test_kick_and_join_by_alias(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    room_id = (await alice.ok("POST", "/createRoom",
                              {"preset": "public_chat", "room_alias_name": "lobby"}))["room_id"]
    joined = await bob.ok("POST", "/join/%23lobby:stub.test", {})
    assert joined["room_id"] == room_id
    status, _ = await bob.call("POST", f"/rooms/{room_id}/kick", {"user_id": alice.user_id})
    assert status == 403
    await alice.ok("POST", f"/rooms/{room_id}/kick", {"user_id": bob.user_id, "reason": "bye"})
    member = await alice.ok("GET", f"/rooms/{room_id}/state/m.room.member/{bob.user_id}")
    assert member == {"membership": "leave", "reason": "bye"}


async def test_redaction_prunes_stored_event(login: Login, stub: StubHomeserver) -> None:
    alice, _, room_id = await _pair(login)
    target = await _send(alice, room_id, {"msgtype": "m.text", "body": "oops"}, "t1")
    first = await alice.ok("PUT", f"/rooms/{room_id}/redact/{target}/r1", {"reason": "typo"})
    again = await alice.ok("PUT", f"/rooms/{room_id}/redact/{target}/r1", {"reason": "typo"})
    assert first == again
    stored = stub.room(room_id).by_id[target].event
    assert stored["content"] == {}
    assert stored["unsigned"]["redacted_because"]["event_id"] == first["event_id"]
