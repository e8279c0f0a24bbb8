"""Server-side key backup storage."""

from __future__ import annotations

from .conftest import Login

AUTH_DATA = {"public_key": "PK", "signatures": {}}


def _key(index: int, verified: bool = False) -> dict:
    return {"first_message_index": index, "forwarded_count": 0, "is_verified": verified,
            "session_data": {"ciphertext": f"c{index}"}}


async def test_backup_versions_and_keys(login: Login) -> None:
    alice = await login("alice")
    status, body = await alice.call("GET", "/room_keys/version")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    version = (await alice.ok("POST", "/room_keys/version", {
        "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": AUTH_DATA}))["version"]
    current = await alice.ok("GET", "/room_keys/version")
    assert (current["version"], current["count"]) == (version, 0)
    put = await alice.ok("PUT", "/room_keys/keys/!r:x/s1", _key(5), params={"version": version})
    assert put["count"] == 1
    await alice.ok("PUT", "/room_keys/keys", {"rooms": {"!r:x": {"sessions": {"s1": _key(9)}}}},
                   params={"version": version})
    assert (await alice.ok("GET", "/room_keys/keys/!r:x/s1",
                           params={"version": version}))["first_message_index"] == 5
    await alice.ok("PUT", "/room_keys/keys/!r:x", {"sessions": {"s1": _key(2)}},
                   params={"version": version})
    everything = await alice.ok("GET", "/room_keys/keys", params={"version": version})
    assert everything["rooms"]["!r:x"]["sessions"]["s1"]["first_message_index"] == 2
    status, body = await alice.call("PUT", "/room_keys/keys/!r:x/s2", _key(0),
                                    params={"version": "999"})
    assert (status, body["errcode"]) == (403, "M_WRONG_ROOM_KEYS_VERSION")
    await alice.ok("DELETE", "/room_keys/keys/!r:x/s1", params={"version": version})
    status, _ = await alice.call("GET", "/room_keys/keys/!r:x/s1", params={"version": version})
    assert status == 404
    await alice.ok("DELETE", f"/room_keys/version/{version}")
    assert (await alice.call("GET", "/room_keys/version"))[0] == 404
