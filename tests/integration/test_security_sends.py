"""Writes the proxy cannot attribute to an account it holds are refused, never forwarded as they
came (#16, item 4). The stub reads tokens as Synapse does: the Authorization header, or the
`access_token` argument, which a form-encoded POST body sets too."""

from __future__ import annotations

import json
from urllib.parse import quote

import aiohttp

from tests.integration.conftest import StartE2EEProxy
from tests.support.plain_client import V3, PlainClient, encrypted_room_of, forwarded, login_all
from tests.support.stub_homeserver import StubHomeserver
from tests.support.wire import assert_ciphertext_only, raw_messages

FORM = "application/x-www-form-urlencoded"
SECRET = b"the plaintext of a file"


async def test_a_send_whose_token_the_proxy_cannot_see_is_refused(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """A JSON body that is a form as well carries Bob's token where only the homeserver looks:
    forwarded, it put plaintext into the encrypted room under his name."""
    proxy = await start_e2ee_proxy()
    alice, bob = await login_all(session, proxy.url, stub, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    send = f"{proxy.url}{V3}/rooms/{quote(room_id, safe='')}/send/m.room.message"
    polyglot = json.dumps(
        {"msgtype": "m.text", "body": "secret", "x": f"&access_token={bob.access_token}&"}
    )
    before = len(stub.requests)
    for method, url, headers, status in (
        ("POST", send, {"Content-Type": FORM}, 401),
        ("PUT", send + "/t1", {}, 401),
        ("PUT", send + "/t2", {"Authorization": "Basic Ym9iOnB3"}, 401),
        # Alice's token in the query, Bob's in the form: the homeserver would read Bob's.
        ("POST", f"{send}?access_token={alice.access_token}", {"Content-Type": FORM}, 400),
    ):
        async with session.request(method, url, data=polyglot, headers=headers) as response:
            body = await response.json()
            assert response.status == status, (url, body)
            assert body["errcode"] in ("M_MISSING_TOKEN", "M_NOT_JSON"), body
    assert forwarded(stub, before, "/send/") == []
    assert raw_messages(stub.raw_events(room_id)) == []


async def test_a_token_in_the_query_still_sends_encrypted(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """The encrypted send goes with the account's token in the header, so the client's query
    token is left out (the homeserver refuses both at once)."""
    proxy = await start_e2ee_proxy()
    alice, bob = await login_all(session, proxy.url, stub, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    by_query = PlainClient(session, proxy.url)
    status, body = await by_query.request(
        "PUT", f"{V3}/rooms/{quote(room_id, safe='')}/send/m.room.message/q1",
        {"msgtype": "m.text", "body": "sent with a query token"},
        params={"access_token": str(alice.access_token)},
    )
    assert status == 200, body
    event = await bob.wait_for_event(room_id, body["event_id"])
    assert event["content"]["body"] == "sent with a query token"
    assert_ciphertext_only(stub.raw_events(room_id))


async def test_an_upload_the_proxy_cannot_hold_is_refused(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """Passed on, the file was on the server in plaintext before any event said which room it
    was for: without a token (one in a form body), or for a device whose keys we lack."""
    proxy = await start_e2ee_proxy()
    (alice,) = await login_all(session, proxy.url, stub, "alice")
    erin_id = stub.register("erin", "pw")
    erin = stub.login("erin", "pw", device_id="ERINDEV")
    stub.upload_keys(erin_id, "ERINDEV", {"device_keys": {
        "user_id": erin_id, "device_id": "ERINDEV",
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {"curve25519:ERINDEV": "Zm9yZWlnbiBjdXJ2ZQ", "ed25519:ERINDEV": "Zm9yZWlnbiBlZA"},
    }})
    form_file = f"access_token={alice.access_token}&x=".encode() + SECRET
    media = f"{proxy.url}/_matrix/media/v3/upload"
    before = len(stub.requests)
    for method, url, headers, data, status in (
        ("POST", media, {"Content-Type": FORM}, form_file, 401),
        ("POST", media, {"Content-Type": "text/plain"}, SECRET, 401),
        ("PUT", media + "/stub.test/abcdef", {"Content-Type": "text/plain"}, SECRET, 401),
        ("POST", media, {"Authorization": f"Bearer {erin.access_token}"}, SECRET, 403),
    ):
        async with session.request(method, url, data=data, headers=headers) as response:
            assert response.status == status, (url, await response.text())
    assert forwarded(stub, before, "/upload", "/create") == []
    assert not any(SECRET in (item.content or b"") for item in stub.media.items.values())
