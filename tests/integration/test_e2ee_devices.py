"""E2EE through the proxy, across devices: re-login on the same device, SSO-style token login."""

from __future__ import annotations

import aiohttp

from tests.integration.conftest import StartE2EEProxy
from tests.support.plain_client import V3, PlainClient, login_all
from tests.support.stub_homeserver import StubHomeserver
from tests.support.wire import raw_messages


async def test_login_again_on_the_same_device_keeps_its_keys(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    proxy = await start_e2ee_proxy()
    alice, bob = await login_all(session, proxy.url, stub, "alice", "bob")
    room_id = await bob.create_encrypted_room(invite=[alice.user_id])
    await alice.join(room_id)
    event_id = await bob.send_text(room_id, "for alice's device")
    await alice.wait_for_event(room_id, event_id)
    keys = stub.keys.devices[(alice.user_id, alice.device_id)].device_keys
    uploads = len(stub.requests_to(r"/keys/upload$"))

    again = PlainClient(session, proxy.url)
    await again.login("alice", device_id=alice.device_id)
    assert again.device_id == alice.device_id and again.access_token != alice.access_token
    assert list(stub.accounts.users[alice.user_id].devices) == [alice.device_id]
    assert stub.keys.devices[(alice.user_id, alice.device_id)].device_keys == keys
    assert not any(
        "device_keys" in (r.json or {}) for r in stub.requests_to(r"/keys/upload$")[uploads:]
    )
    history = {e["event_id"]: e for e in await again.messages(room_id)}
    assert history[event_id]["content"]["body"] == "for alice's device"
    later = await bob.send_text(room_id, "to the new token")
    assert (await again.wait_for_event(room_id, later))["content"]["body"] == "to the new token"


async def test_token_login_creates_the_crypto_device(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    proxy = await start_e2ee_proxy()
    user_id = stub.register("sso", "pw")
    client = PlainClient(session, proxy.url)
    answer = await client.call(
        "POST", f"{V3}/login", {"type": "m.login.token", "token": stub.mint_login_token(user_id)}
    )
    device_id = answer["device_id"]
    state = stub.keys.devices.get((user_id, device_id))
    assert state is not None and state.device_keys is not None and state.one_time_keys
    client.access_token, client.user_id, client.device_id = (
        answer["access_token"],
        user_id,
        device_id,
    )
    (bob,) = await login_all(session, proxy.url, stub, "bob")
    room_id = await bob.create_encrypted_room(invite=[user_id])
    await client.join(room_id)
    event_id = await bob.send_text(room_id, "sso works")
    (stored,) = raw_messages(stub.raw_events(room_id))
    assert stored["type"] == "m.room.encrypted"
    assert (await client.wait_for_event(room_id, event_id))["content"]["body"] == "sso works"
