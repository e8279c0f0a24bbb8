"""/keys/*: uploads, one-time key consumption, fallback reuse, device-list tracking."""

from __future__ import annotations

from typing import Any

from .conftest import Api, Login


def _device_keys(api: Api, ed: str = "ED") -> dict[str, Any]:
    return {
        "user_id": api.user_id, "device_id": api.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"curve25519:{api.device_id}": "CURVE", f"ed25519:{api.device_id}": ed},
        "signatures": {api.user_id: {f"ed25519:{api.device_id}": "SIG"}},
    }


def _otk(n: int) -> dict[str, Any]:
    return {"key": f"otk{n}", "signatures": {}}


async def _claim(api: Api, target: Api) -> dict[str, Any]:
    result = await api.ok("POST", "/keys/claim", {
        "one_time_keys": {target.user_id: {target.device_id: "signed_curve25519"}}})
    keys: dict[str, Any] = result["one_time_keys"].get(target.user_id, {}).get(
        target.device_id, {})
    return keys


async def test_upload_counts_and_query(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    result = await alice.ok("POST", "/keys/upload", {
        "device_keys": _device_keys(alice),
        "one_time_keys": {"signed_curve25519:A": _otk(1), "signed_curve25519:B": _otk(2)}})
    assert result["one_time_key_counts"] == {"signed_curve25519": 2}
    query = await bob.ok("POST", "/keys/query", {"device_keys": {alice.user_id: []}})
    keys = query["device_keys"][alice.user_id][alice.device_id]
    assert keys["keys"][f"ed25519:{alice.device_id}"] == "ED"
    assert "device_display_name" in keys["unsigned"]
    assert query["failures"] == {}
    one = await bob.ok("POST", "/keys/query",
                       {"device_keys": {alice.user_id: ["OTHER"], "@nobody:stub.test": []}})
    assert one["device_keys"] == {alice.user_id: {}, "@nobody:stub.test": {}}


async def test_changed_device_keys_are_refused(login: Login) -> None:
    alice = await login("alice")
    await alice.ok("POST", "/keys/upload", {"device_keys": _device_keys(alice)})
    await alice.ok("POST", "/keys/upload", {"device_keys": _device_keys(alice)})
    status, _ = await alice.call("POST", "/keys/upload",
                                 {"device_keys": _device_keys(alice, ed="OTHER")})
    assert status == 400


async def test_duplicate_one_time_key_id_with_new_content_is_400(login: Login) -> None:
    alice = await login("alice")
    await alice.ok("POST", "/keys/upload", {"one_time_keys": {"signed_curve25519:A": _otk(1)}})
    await alice.ok("POST", "/keys/upload", {"one_time_keys": {"signed_curve25519:A": _otk(1)}})
    status, body = await alice.call("POST", "/keys/upload",
                                    {"one_time_keys": {"signed_curve25519:A": _otk(9)}})
    assert status == 400
    assert "One time key signed_curve25519:A already exists" in body["error"]


async def test_claim_consumes_one_time_keys_then_reuses_fallback(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    await alice.ok("POST", "/keys/upload", {
        "one_time_keys": {"signed_curve25519:A": _otk(1)},
        "fallback_keys": {"signed_curve25519:F": {"key": "fb", "fallback": True}}})
    since = (await alice.sync())["next_batch"]
    assert (await alice.sync())["device_unused_fallback_key_types"] == ["signed_curve25519"]
    assert await _claim(bob, alice) == {"signed_curve25519:A": _otk(1)}
    fallback = {"signed_curve25519:F": {"key": "fb", "fallback": True}}
    assert await _claim(bob, alice) == fallback
    assert await _claim(bob, alice) == fallback
    sync = await alice.sync(since)
    assert sync["device_one_time_keys_count"] == {"signed_curve25519": 0}
    assert sync["device_unused_fallback_key_types"] == []
    await alice.ok("POST", "/keys/upload", {
        "fallback_keys": {"signed_curve25519:G": {"key": "fb2", "fallback": True}}})
    assert (await alice.sync())["device_unused_fallback_key_types"] == ["signed_curve25519"]


async def test_claim_without_keys_returns_nothing(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    assert await _claim(bob, alice) == {}


async def test_device_lists_changed_after_key_upload(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    carol = await login("carol")
    room_id = (await alice.ok("POST", "/createRoom", {"invite": [bob.user_id]}))["room_id"]
    await bob.ok("POST", f"/join/{room_id}", {})
    bob_since = (await bob.sync())["next_batch"]
    carol_since = (await carol.sync())["next_batch"]
    await alice.ok("POST", "/keys/upload", {"device_keys": _device_keys(alice)})
    bob_sync = await bob.sync(bob_since, timeout="1000")
    assert bob_sync["device_lists"]["changed"] == [alice.user_id]
    assert "device_lists" not in await carol.sync(carol_since)
    changes = await bob.ok("GET", "/keys/changes",
                           params={"from": bob_since, "to": bob_sync["next_batch"]})
    assert changes == {"changed": [alice.user_id], "left": []}


async def test_new_device_and_leaving_update_device_lists(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    room_id = (await alice.ok("POST", "/createRoom", {"invite": [bob.user_id]}))["room_id"]
    since = (await alice.sync())["next_batch"]
    await bob.ok("POST", f"/join/{room_id}", {})
    joined = await alice.sync(since)
    assert bob.user_id in joined["device_lists"]["changed"]
    await login("bob")  # a new device
    changed = await alice.sync(joined["next_batch"])
    assert changed["device_lists"]["changed"] == [bob.user_id]
    await bob.ok("POST", f"/rooms/{room_id}/leave", {})
    left = await alice.sync(changed["next_batch"])
    assert left["device_lists"] == {"changed": [], "left": [bob.user_id]}


async def test_cross_signing_keys_in_query(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    master = {"user_id": alice.user_id, "usage": ["master"], "keys": {"ed25519:M": "M"}}
    user_signing = {"user_id": alice.user_id, "usage": ["user_signing"],
                    "keys": {"ed25519:U": "U"}}
    await alice.ok("POST", "/keys/device_signing/upload",
                   {"master_key": master, "user_signing_key": user_signing})
    mine = await alice.ok("POST", "/keys/query", {"device_keys": {alice.user_id: []}})
    theirs = await bob.ok("POST", "/keys/query", {"device_keys": {alice.user_id: []}})
    assert mine["master_keys"][alice.user_id] == master
    assert mine["user_signing_keys"][alice.user_id] == user_signing
    assert theirs["user_signing_keys"] == {}
