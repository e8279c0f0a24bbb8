"""Login, whoami, logout, registration and the generic error rules."""

from __future__ import annotations

import json

from tests.support.stub_homeserver import StubHomeserver

from .conftest import Api, Login


async def test_versions_lists_v3(anon: Api) -> None:
    result = await anon.ok("GET", "/_matrix/client/versions")
    assert "v1.11" in result["versions"]


async def test_password_login_then_whoami(login: Login, stub: StubHomeserver) -> None:
    alice = await login("alice")
    assert alice.user_id == "@alice:stub.test"
    assert (await alice.ok("GET", "/account/whoami"))["device_id"] == alice.device_id
    assert alice.device_id in stub.accounts.user("@alice:stub.test").devices


async def test_legacy_user_field_and_r0_prefix(anon: Api, stub: StubHomeserver) -> None:
    stub.register("bob", "secret")
    result = await anon.ok("POST", "/_matrix/client/r0/login",
                           {"type": "m.login.password", "user": "@bob:stub.test",
                            "password": "secret"})
    assert result["user_id"] == "@bob:stub.test"
    assert result["home_server"] == "stub.test"


async def test_wrong_password_is_403(anon: Api, stub: StubHomeserver) -> None:
    stub.register("bob", "secret")
    status, body = await anon.call("POST", "/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"},
        "password": "nope"})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")


async def test_login_reuses_device_id(login: Login, stub: StubHomeserver) -> None:
    first = await login("alice", device_id="PROXYDEV")
    second = await login("alice", device_id="PROXYDEV")
    assert first.device_id == second.device_id == "PROXYDEV"
    assert list(stub.accounts.user(first.user_id).devices) == ["PROXYDEV"]
    assert first.token != second.token


async def test_token_login_is_single_use(anon: Api, stub: StubHomeserver) -> None:
    user_id = stub.register("carol")
    token = stub.mint_login_token(user_id)
    result = await anon.ok("POST", "/login", {"type": "m.login.token", "token": token})
    assert result["user_id"] == user_id
    status, body = await anon.call("POST", "/login", {"type": "m.login.token", "token": token})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")


async def test_missing_and_unknown_tokens(anon: Api) -> None:
    status, body = await anon.call("GET", "/account/whoami")
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
    status, body = await anon.call("GET", "/account/whoami", params={"access_token": "nope"})
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")


async def test_access_token_query_parameter(login: Login, anon: Api) -> None:
    alice = await login("alice")
    assert alice.token is not None
    result = await anon.ok("GET", "/account/whoami", params={"access_token": alice.token})
    assert result["user_id"] == alice.user_id


async def test_access_token_as_synapse_reads_it(login: Login, anon: Api) -> None:
    """From a form-encoded POST body too (over the query's), never header and argument both."""
    alice, bob = await login("alice"), await login("bob")
    assert alice.token is not None and bob.token is not None
    room = await alice.ok("POST", "/createRoom", {})
    body = json.dumps({"msgtype": "m.text", "body": "hi", "x": f"&access_token={bob.token}&"})
    await alice.ok("POST", f"/rooms/{room['room_id']}/invite", {"user_id": bob.user_id})
    await bob.ok("POST", f"/rooms/{room['room_id']}/join", {})
    status, sent = await anon.call(
        "POST", f"/rooms/{room['room_id']}/send/m.room.message",
        params={"access_token": alice.token}, data=body.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200, sent
    status, event = await alice.call("GET", f"/rooms/{room['room_id']}/event/{sent['event_id']}")
    assert event["sender"] == bob.user_id
    status, mixed = await alice.call("GET", "/account/whoami", params={"access_token": "x"})
    assert (status, mixed["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_logout_invalidates_token_and_device(login: Login, stub: StubHomeserver) -> None:
    alice = await login("alice")
    await alice.ok("POST", "/logout")
    status, body = await alice.call("GET", "/account/whoami")
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert stub.accounts.user(alice.user_id).devices == {}


async def test_logout_all(login: Login) -> None:
    one = await login("alice")
    two = await login("alice")
    await one.ok("POST", "/logout/all")
    assert (await two.call("GET", "/account/whoami"))[0] == 401


async def test_register_with_dummy_auth(anon: Api) -> None:
    status, body = await anon.call("POST", "/register", {"username": "dave", "password": "pw"})
    assert status == 401 and body["flows"] == [{"stages": ["m.login.dummy"]}]
    result = await anon.ok("POST", "/register", {
        "username": "dave", "password": "pw", "auth": {"type": "m.login.dummy"}})
    assert result["user_id"] == "@dave:stub.test" and result["access_token"]
    status, body = await anon.call("POST", "/register", {
        "username": "dave", "password": "pw", "auth": {"type": "m.login.dummy"}})
    assert (status, body["errcode"]) == (400, "M_USER_IN_USE")


async def test_unknown_endpoint_is_unrecognized(anon: Api) -> None:
    status, body = await anon.call("GET", "/_matrix/client/v3/no/such/thing")
    assert status == 404
    assert body == {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}


async def test_bad_json_is_not_json(anon: Api) -> None:
    status, body = await anon.call("POST", "/login", data=b"{not json",
                                   headers={"Content-Type": "application/json"})
    assert (status, body["errcode"]) == (400, "M_NOT_JSON")


async def test_options_preflight_is_204(anon: Api) -> None:
    status, _ = await anon.call("OPTIONS", "/_matrix/client/v3/sync")
    assert status == 204


async def test_python_helpers_match_http(stub: StubHomeserver, anon: Api) -> None:
    user_id = stub.register("erin", "pw")
    session = stub.login("erin", "pw", device_id="PYDEV")
    anon.token = session.access_token
    assert await anon.ok("GET", "/account/whoami") == {
        "user_id": user_id, "device_id": "PYDEV", "is_guest": False}
    room_id = stub.create_room(user_id, name="made in python")
    assert stub.raw_events(room_id)[-1]["content"] == {"name": "made in python"}


async def test_delete_devices_after_the_password_step(login: Login, stub: StubHomeserver) -> None:
    alice = await login("alice", device_id="ONE")
    await login("alice", device_id="TWO")
    await login("alice", device_id="THREE")
    status, step = await alice.call("POST", "/delete_devices", {"devices": ["TWO", "THREE"]})
    assert status == 401 and step["flows"] == [{"stages": ["m.login.password"]}], step
    auth = {"type": "m.login.password", "password": "wrong", "session": step["session"]}
    status, body = await alice.call("POST", "/delete_devices", {"devices": ["TWO"], "auth": auth})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    auth["password"] = "pw"
    await alice.ok("POST", "/delete_devices", {"devices": ["TWO", "THREE"], "auth": auth})
    assert set(stub.accounts.user(alice.user_id).devices) == {"ONE"}
