"""E2EE through the proxy, the reading side: login uploads our device's keys; what one user sends
into an encrypted room is ciphertext on the server and plaintext for the other user's /sync,
/messages, /context, /event and /relations; client filters still apply; Olm to-device traffic is
consumed by the proxy; an undecryptable event becomes a visible notice (or stays raw)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from e2eproxy.config import EncryptionConfig
from e2eproxy.protocol.canonical import verify_json
from tests.integration.conftest import StartE2EEProxy, proxied
from tests.support.plain_client import PlainClient, login_all, third_party_encrypted_event
from tests.support.stub_homeserver import StubHomeserver
from tests.support.wire import MEGOLM, assert_ciphertext_only, raw_messages

JsonDict = dict[str, Any]


async def alice_and_bob(
    stub: StubHomeserver,
    session: aiohttp.ClientSession,
    start: StartE2EEProxy,
    encryption: EncryptionConfig | None = None,
) -> tuple[PlainClient, PlainClient, str]:
    """Alice and Bob, each logged in through the proxy, joined to Alice's encrypted room."""
    _, (alice, bob) = await proxied(stub, session, start, "alice", "bob", encryption=encryption)
    room_id = await alice.create_encrypted_room(invite=[bob.user_id])
    await bob.join(room_id)
    return alice, bob, room_id


async def test_login_uploads_signed_device_keys_and_one_time_keys(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    proxy = await start_e2ee_proxy()
    (alice,) = await login_all(session, proxy.url, stub, "alice")
    state = stub.keys.devices.get((alice.user_id, alice.device_id))
    assert state is not None and state.device_keys is not None, "no device keys uploaded at login"
    keys = state.device_keys
    assert keys["user_id"] == alice.user_id and keys["device_id"] == alice.device_id
    assert MEGOLM in keys["algorithms"]
    ed25519 = keys["keys"][f"ed25519:{alice.device_id}"]
    assert keys["keys"][f"curve25519:{alice.device_id}"]
    assert verify_json(keys, alice.user_id, f"ed25519:{alice.device_id}", ed25519)
    assert state.one_time_keys, "no one-time keys uploaded at login"
    for key_id, otk in state.one_time_keys.items():
        assert key_id.startswith("signed_curve25519:")
        assert verify_json(otk, alice.user_id, f"ed25519:{alice.device_id}", ed25519)
    # Another user sees the same device through the proxy; still one device for Alice.
    (bob,) = await login_all(session, proxy.url, stub, "bob")
    queried = await bob.keys_query(alice.user_id)
    assert list(queried["device_keys"][alice.user_id]) == [alice.device_id]
    assert queried["device_keys"][alice.user_id][alice.device_id]["keys"] == keys["keys"]
    assert list(stub.accounts.users[alice.user_id].devices) == [alice.device_id]


async def test_message_is_ciphertext_on_the_server_and_plaintext_in_sync(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    alice, bob, room_id = await alice_and_bob(stub, session, start_e2ee_proxy)
    content = {"msgtype": "m.text", "body": "hello bob"}
    event_id = await alice.send(room_id, content, txn="txn-hello")

    raw = stub.raw_events(room_id)
    assert_ciphertext_only(raw)
    (stored,) = raw_messages(raw)
    assert stored["event_id"] == event_id
    assert "hello bob" not in str(stored)

    seen = await bob.wait_for_event(room_id, event_id)
    assert seen["type"] == "m.room.message"
    assert seen["content"] == content
    assert seen["sender"] == alice.user_id == stored["sender"]
    assert seen["origin_server_ts"] == stored["origin_server_ts"]
    assert "transaction_id" not in seen.get("unsigned", {})

    own = await alice.wait_for_event(room_id, event_id)
    assert own["type"] == "m.room.message" and own["content"] == content
    assert own["origin_server_ts"] == stored["origin_server_ts"]
    assert own["unsigned"]["transaction_id"] == "txn-hello"

    # And back the other way.
    reply_id = await bob.send_text(room_id, "hi alice")
    assert_ciphertext_only(stub.raw_events(room_id))
    reply = await alice.wait_for_event(room_id, reply_id)
    assert reply["content"] == {"msgtype": "m.text", "body": "hi alice"}
    assert reply["sender"] == bob.user_id

    # No Olm to-device message (the room keys) ever reached either plain client.
    for client in (alice, bob):
        assert [e for e in client.to_device_events() if e.get("type") == "m.room.encrypted"] == []


async def test_history_endpoints_are_decrypted(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    alice, bob, room_id = await alice_and_bob(stub, session, start_e2ee_proxy)
    first = await alice.send_text(room_id, "first")
    second = await alice.send_text(room_id, "second", txn="txn-second")
    reaction = await alice.send(
        room_id,
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": first, "key": "+1"}},
        event_type="m.reaction",
    )
    assert_ciphertext_only(stub.raw_events(room_id))
    await bob.wait_for_event(room_id, reaction)
    stored = {e["event_id"]: e for e in stub.raw_events(room_id)}

    def plain(event: JsonDict, body: str) -> None:
        assert event["type"] == "m.room.message", event
        assert event["content"] == {"msgtype": "m.text", "body": body}, event
        raw_event = stored[str(event["event_id"])]
        assert event["sender"] == raw_event["sender"]
        assert event["origin_server_ts"] == raw_event["origin_server_ts"]

    chunk = {e["event_id"]: e for e in await bob.messages(room_id)}
    plain(chunk[first], "first")
    plain(chunk[second], "second")
    assert chunk[reaction]["type"] == "m.reaction"
    assert "m.room.encrypted" not in {e["type"] for e in chunk.values()}

    context = await bob.context(room_id, second, limit=4)
    plain(context["event"], "second")
    before = {e["event_id"]: e for e in context["events_before"]}
    plain(before[first], "first")
    after = {e["event_id"]: e for e in context["events_after"]}
    assert after[reaction]["type"] == "m.reaction"

    plain(await bob.event(room_id, first), "first")

    (related,) = await bob.relations(room_id, first)
    assert related["event_id"] == reaction
    assert related["type"] == "m.reaction"
    assert related["content"]["m.relates_to"]["key"] == "+1"

    # The sender's own history decrypts too, with the transaction id for its own device.
    own = {e["event_id"]: e for e in await alice.messages(room_id)}
    plain(own[second], "second")
    assert own[second]["unsigned"]["transaction_id"] == "txn-second"


@pytest.mark.parametrize("by_id", [False, True], ids=["inline", "filter_id"])
async def test_client_type_filter_still_gets_decrypted_messages(
    stub: StubHomeserver,
    session: aiohttp.ClientSession,
    start_e2ee_proxy: StartE2EEProxy,
    by_id: bool,
) -> None:
    alice, bob, room_id = await alice_and_bob(stub, session, start_e2ee_proxy)
    event_id = await alice.send_text(room_id, "through the filter")
    definition: JsonDict = {
        "room": {"timeline": {"types": ["m.room.message"]}, "state": {"types": ["m.room.message"]}}
    }
    filter_: str | JsonDict = await bob.create_filter(definition) if by_id else definition
    await bob.sync_until(
        lambda: bob.synced_event(room_id, event_id) is not None,
        "the message through a types filter",
        filter_=filter_,
    )
    seen = bob.synced_event(room_id, event_id)
    assert seen is not None and seen["content"]["body"] == "through the filter"
    for body in bob.sync_bodies:
        room = body.get("rooms", {}).get("join", {}).get(room_id, {})
        for section in ("timeline", "state"):
            types = {e["type"] for e in room.get(section, {}).get("events", [])}
            assert types <= {"m.room.message"}, (section, types)
    # The server was asked for the encrypted events too (the filter was widened upstream).
    bearer = f"Bearer {bob.access_token}"
    upstream = [
        r
        for r in stub.requests_to(r"/sync$")
        if r.headers.get("Authorization") == bearer
        and "m.room.message" in r.query.get("filter", "")
    ]
    assert upstream and all("m.room.encrypted" in r.query["filter"] for r in upstream)


async def test_history_type_filters_still_get_decrypted_messages(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """/messages and /context take a RoomEventFilter: a client asking for `m.room.message` gets
    its decrypted messages (the server only knows them as `m.room.encrypted`), and no other
    type it did not ask for."""
    alice, bob, room_id = await alice_and_bob(stub, session, start_e2ee_proxy)
    first = await alice.send_text(room_id, "first")
    reaction = await alice.send(
        room_id,
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": first, "key": "x"}},
        event_type="m.reaction",
    )
    second = await alice.send_text(room_id, "second")
    only_messages = {"types": ["m.room.message"]}
    chunk = await bob.messages(room_id, filter_=only_messages)
    assert [(e["event_id"], e["type"]) for e in chunk] == [
        (second, "m.room.message"), (first, "m.room.message")
    ]
    assert [e["content"]["body"] for e in chunk] == ["second", "first"]
    no_messages = await bob.messages(room_id, filter_={"not_types": ["m.room.message"]})
    ids = [e["event_id"] for e in no_messages]
    assert reaction in ids and first not in ids and second not in ids
    context = await bob.context(room_id, reaction, filter_=only_messages)
    assert context["event"]["type"] == "m.reaction"  # the event asked for is always there
    assert [e["event_id"] for e in context["events_before"]] == [first]
    assert [e["event_id"] for e in context["events_after"]] == [second]
    # /relations by event type: the server only sees m.room.encrypted relations.
    [annotation] = await bob.relations(room_id, first, "m.annotation", "m.reaction")
    assert (annotation["event_id"], annotation["type"]) == (reaction, "m.reaction")
    assert await bob.relations(room_id, first, "m.annotation", "m.room.message") == []
    assert [e["event_id"] for e in await bob.relations(room_id, first, "m.annotation")] == [
        reaction
    ]


async def test_olm_to_device_never_reaches_the_plain_client(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    proxy = await start_e2ee_proxy()
    (bob,) = await login_all(session, proxy.url, stub, "bob")
    stub.register("carol", "pw")
    carol = stub.login("carol", "pw", device_id="CAROLDEV")
    # Hold the proxy's background sync back (its next /sync waits), so that the to-device
    # messages are still in Bob's inbox when the client syncs.
    hold = stub.faults.add(r"/sync$", method="GET", delay=2.0, times=1)
    olm = {
        "algorithm": "m.olm.v1.curve25519-aes-sha2",
        "sender_key": "c2VuZGVyIGtleSBvZiBjYXJvbA",
        "ciphertext": {"bm90IGEga2V5": {"type": 0, "body": "bm90IHJlYWxseSBvbG0"}},
    }
    stub.send_to_device(
        carol.user_id,
        carol.device_id,
        "t1",
        "m.room.encrypted",
        {bob.user_id: {bob.device_id: olm}},
    )
    stub.send_to_device(
        carol.user_id,
        carol.device_id,
        "t2",
        "org.example.ping",
        {bob.user_id: {bob.device_id: {"hello": "bob"}}},
    )
    loop = asyncio.get_running_loop()
    end = loop.time() + 5
    while hold.hits == 0:
        assert loop.time() < end, "the proxy's background sync never came back"
        await asyncio.sleep(0.02)
    body = await bob.sync()
    types = [e["type"] for e in body.get("to_device", {}).get("events", [])]
    assert "m.room.encrypted" not in types
    assert "org.example.ping" in types, "a non-crypto to-device event must reach the client"


async def test_undecryptable_event_becomes_a_visible_notice(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    _, bob, room_id = await alice_and_bob(
        stub, session, start_e2ee_proxy, EncryptionConfig(missing_key_wait=0.2)
    )
    event_id = third_party_encrypted_event(stub, room_id)
    seen = await bob.wait_for_event(room_id, event_id)
    assert seen["type"] == "m.room.message"
    assert seen["content"]["msgtype"] == "m.notice"
    assert "decrypt" in seen["content"]["body"].lower()
    assert seen["sender"] == "@carol:stub.test"
    from_history = {e["event_id"]: e for e in await bob.messages(room_id)}[event_id]
    assert from_history["content"]["msgtype"] == "m.notice"
    single = await bob.event(room_id, event_id)
    assert single["event_id"] == event_id and single["content"]["msgtype"] == "m.notice"


async def test_undecryptable_raw_mode_passes_the_encrypted_event(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    raw_mode = EncryptionConfig(missing_key_wait=0.2, undecryptable="raw")
    _, bob, room_id = await alice_and_bob(stub, session, start_e2ee_proxy, raw_mode)
    event_id = third_party_encrypted_event(stub, room_id)
    seen = await bob.wait_for_event(room_id, event_id)
    assert seen["type"] == "m.room.encrypted"
    stored = next(e for e in stub.raw_events(room_id) if e["event_id"] == event_id)
    assert seen["content"] == stored["content"]
    single = await bob.event(room_id, event_id)
    assert single["type"] == "m.room.encrypted"


async def test_background_sync_starts_from_the_clients_token(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """With no token of its own, the proxy's sync continues from the client's stream instead of
    an initial sync (heavy on a large account, and nothing in it the engine lacks)."""
    proxy = await start_e2ee_proxy()
    # The first /sync after login is the proxy's own initial one: hold it until the client's
    # sync makes it step aside.
    hold = stub.faults.add(r"/sync$", method="GET", delay=30.0, times=1)
    (bob,) = await login_all(session, proxy.url, stub, "bob")
    loop = asyncio.get_running_loop()
    end = loop.time() + 5
    while hold.hits == 0:
        assert loop.time() < end, "the proxy's background sync never started"
        await asyncio.sleep(0.02)
    await bob.sync()
    assert bob.next_batch
    end = loop.time() + 5
    while True:
        ours = [r for r in stub.requests_to(r"/sync$", "GET") if "set_presence" in r.query]
        if len(ours) >= 2:
            break
        assert loop.time() < end, "the proxy's background sync did not resume"
        await asyncio.sleep(0.02)
    assert "since" not in ours[0].query
    assert ours[1].query.get("since") == bob.next_batch


async def test_redacted_encrypted_event_shows_as_deleted_not_undecryptable(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    alice, bob, room_id = await alice_and_bob(stub, session, start_e2ee_proxy)
    event_id = await alice.send_text(room_id, "oops, wrong room")
    await bob.wait_for_event(room_id, event_id)
    redaction = await alice.call(
        "PUT", f"/_matrix/client/v3/rooms/{room_id}/redact/{event_id}/txn-redact", {}
    )
    assert redaction["event_id"]

    def deleted(event: dict[str, Any]) -> None:
        assert event["type"] == "m.room.encrypted"  # the server pruned it: nothing to decrypt
        assert event["content"] == {}
        assert event["unsigned"]["redacted_because"]["event_id"] == redaction["event_id"]

    for client in (alice, bob):
        [seen] = [e for e in await client.messages(room_id) if e["event_id"] == event_id]
        deleted(seen)
        deleted(await client.event(room_id, event_id))
        context = await client.context(room_id, event_id)
        deleted(context["event"])


async def test_background_sync_refused_position_starts_afresh(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """A server that refuses the stored position (400) gets an initial sync next, not the same
    refused token forever; device lists are queried again (changes in the gap were missed)."""
    proxy = await start_e2ee_proxy()
    (bob,) = await login_all(session, proxy.url, stub, "bob")
    loop = asyncio.get_running_loop()

    def ours() -> list[Any]:
        return [r for r in stub.requests_to(r"/sync$", "GET") if "set_presence" in r.query]

    async def until(predicate: Any, what: str) -> None:
        end = loop.time() + 5
        while not predicate():
            assert loop.time() < end, what
            await asyncio.sleep(0.02)

    await until(lambda: any("since" in r.query for r in ours()), "no incremental background sync")

    def own_queries() -> int:
        return sum(
            bob.user_id in (r.json or {}).get("device_keys", {})
            for r in stub.requests_to(r"/keys/query$")
        )

    queried = own_queries()
    refused = stub.faults.add(r"/sync$", method="GET", status=400, errcode="M_UNKNOWN", times=1)
    stub.register("carol", "pw")
    carol = stub.login("carol", "pw", device_id="CAROLDEV")
    stub.send_to_device(  # wakes the parked background sync
        carol.user_id, carol.device_id, "t1", "org.example.ping", {bob.user_id: {"*": {}}}
    )
    await until(lambda: refused.hits == 1, "the refused position was never asked for")
    # The login's initial sync was the first without a position; a second one follows the refusal.
    await until(
        lambda: sum("since" not in r.query for r in ours()) >= 2, "no initial sync after refusal"
    )
    await until(lambda: own_queries() > queried, "own device list not queried again")
