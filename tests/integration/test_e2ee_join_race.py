"""A send right after joining, before any sync showed the room: the key still reaches everyone."""

from __future__ import annotations

import aiohttp

from tests.integration.conftest import StartE2EEProxy
from tests.support.plain_client import PlainClient, login_all, to_device_recipients
from tests.support.stub_homeserver import StubHomeserver
from tests.support.wire import assert_ciphertext_only


async def bob_sends_right_after_joining(
    stub: StubHomeserver, alice: PlainClient, bob: PlainClient
) -> str:
    """Alice's new encrypted room, Bob invited; Bob joins and sends at once. The room key went to
    Alice's device before the message, the server holds only ciphertext, Alice reads it.
    Returns the room id."""
    room_id = await alice.create_encrypted_room(invite=[bob.user_id])
    await bob.join(room_id)
    mark = len(stub.requests)
    first = await bob.send_text(room_id, "hi, just joined")
    assert (alice.user_id, alice.device_id) in to_device_recipients(stub.requests, mark)
    assert_ciphertext_only(stub.raw_events(room_id))
    seen = await alice.wait_for_event(room_id, first)
    assert seen["type"] == "m.room.message"
    assert seen["content"] == {"msgtype": "m.text", "body": "hi, just joined"}
    return room_id


async def test_two_proxies_send_right_after_joining(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    alice_proxy = await start_e2ee_proxy()
    bob_proxy = await start_e2ee_proxy()
    (alice,) = await login_all(session, alice_proxy.url, stub, "alice")
    (bob,) = await login_all(session, bob_proxy.url, stub, "bob")
    # Bob's proxy has not seen the room in any sync: it must ask the server, then share the
    # key with Alice's device before the first message leaves.
    room_id = await bob_sends_right_after_joining(stub, alice, bob)
    back = await alice.send_text(room_id, "welcome")
    assert (await bob.wait_for_event(room_id, back))["content"]["body"] == "welcome"
    assert_ciphertext_only(stub.raw_events(room_id))
    # Each proxy holds only its own user's account.
    assert [k.user_id for k in await alice_proxy.store.list_accounts()] == [alice.user_id]
    assert [k.user_id for k in await bob_proxy.store.list_accounts()] == [bob.user_id]


async def test_one_proxy_invitee_sends_right_after_joining(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    proxy = await start_e2ee_proxy()
    alice, bob = await login_all(session, proxy.url, stub, "alice", "bob")
    await bob_sends_right_after_joining(stub, alice, bob)
