"""E2EE through the proxy, the writing side: what goes into an encrypted room is encrypted (and
nothing else is), it fails closed when the proxy cannot be sure, key shares survive upstream
faults, transactions are idempotent, sessions rotate by count and when a member leaves."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from e2eproxy.config import EncryptionConfig
from tests.integration.conftest import StartE2EEProxy, proxied
from tests.support.plain_client import (
    PlainClient,
    direct,
    encrypted_room_of,
    get_media,
    stub_media,
    to_device_recipients,
    upload_media,
)
from tests.support.stub_homeserver import StubHomeserver
from tests.support.wire import (
    assert_ciphertext_only,
    encryption_state,
    megolm_message_index,
    raw_messages,
)


def sent_events(stub: StubHomeserver, room_id: str) -> list[dict[str, Any]]:
    return raw_messages(stub.raw_events(room_id))


async def test_unknown_room_encryption_state_fails_closed(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    # Keep the proxy's background sync from ever seeing the room: its first /sync waits.
    stub.faults.add(r"/sync$", method="GET", delay=3.0, times=1)
    _, (alice,) = await proxied(stub, session, start_e2ee_proxy, "alice")
    room_id = stub.create_room(alice.user_id, initial_state=[encryption_state()])
    broken = stub.faults.add(r"/state/m\.room\.encryption", method="GET", status=500)
    status, body = await alice.send_raw(room_id, {"msgtype": "m.text", "body": "secret"})
    assert status >= 400, body
    assert isinstance(body, dict) and body.get("errcode"), body
    assert broken.hits >= 1, "the proxy never asked the server whether the room is encrypted"
    assert sent_events(stub, room_id) == []
    # Once the server answers, the same send goes out encrypted.
    stub.faults.remove(broken)
    await alice.send_text(room_id, "secret")
    assert_ciphertext_only(stub.raw_events(room_id))
    assert len(sent_events(stub, room_id)) == 1


async def test_a_404_that_is_not_the_servers_no_such_state_is_doubt_not_plain(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """A 404 from something in between (or an endpoint it does not know) says nothing about
    the room: only the server's M_NOT_FOUND for the state event means 'unencrypted'."""
    stub.faults.add(r"/sync$", method="GET", delay=3.0, times=1)
    _, (alice,) = await proxied(stub, session, start_e2ee_proxy, "alice")
    room_id = stub.create_room(alice.user_id, initial_state=[encryption_state()])
    stub.faults.add(
        r"/state/m\.room\.encryption", method="GET", status=404, errcode="M_UNRECOGNIZED"
    )
    status, body = await alice.send_raw(room_id, {"msgtype": "m.text", "body": "secret"})
    assert status >= 400, body
    assert sent_events(stub, room_id) == []


async def test_the_homeserver_cannot_turn_encryption_off_once_the_proxy_knows_it(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
) -> None:
    """Once a room is known to be encrypted, a server that says it is not (its own 404 for
    the state event), or that changes it to an algorithm the proxy lacks, gets no plaintext:
    not from this proxy, nor from a new one on the same store."""
    proxy, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    await alice.send_text(room_id, "while the server still says so")
    stub.faults.add(r"/state/m\.room\.encryption", method="GET", status=404,
                    errcode="M_NOT_FOUND")
    await alice.send_text(room_id, "after the server says the room is plain")
    again = await start_e2ee_proxy(store=proxy.store)
    alice.base_url = again.url
    await alice.send_text(room_id, "through a new proxy on the same store")
    # The room's state changed under the proxy to an algorithm it does not have.
    downgrade = {"algorithm": "m.none"}
    await direct(alice, stub).call(  # around the proxy, which would not send it
        "PUT", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.encryption/", downgrade
    )
    await alice.sync()
    status, _ = await alice.send_raw(room_id, {"msgtype": "m.text", "body": "downgraded?"})
    # Sent encrypted as before, or refused: never in the clear.
    assert_ciphertext_only(stub.raw_events(room_id))
    assert "downgraded?" not in json.dumps(stub.raw_events(room_id))
    assert len(sent_events(stub, room_id)) == (4 if status == 200 else 3)


async def test_key_share_failure_sends_nothing_and_the_retry_succeeds(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    fault = stub.faults.add(r"/sendToDevice/", method="PUT", status=500)
    content = {"msgtype": "m.text", "body": "after the outage"}
    status, body = await alice.send_raw(room_id, content, txn="txn-outage")
    assert status >= 400, body
    assert isinstance(body, dict) and body.get("errcode"), body
    assert fault.hits >= 2, "the proxy did not retry the to-device batch"
    assert sent_events(stub, room_id) == []
    stub.faults.remove(fault)
    event_id = await alice.send(room_id, content, txn="txn-outage")
    (stored,) = sent_events(stub, room_id)
    assert stored["event_id"] == event_id
    assert_ciphertext_only(stub.raw_events(room_id))
    seen = await bob.wait_for_event(room_id, event_id)
    assert seen["type"] == "m.room.message" and seen["content"] == content


async def test_same_txn_twice_is_one_event_encrypted_once(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    content = {"msgtype": "m.text", "body": "once"}
    first = await alice.send(room_id, content, txn="txn-same")
    second = await alice.send(room_id, content, txn="txn-same")
    assert first == second
    (stored,) = sent_events(stub, room_id)
    assert stored["event_id"] == first
    assert megolm_message_index(stored["content"]["ciphertext"]) == 0
    # The retry did not encrypt again: the next message uses the next index of the session.
    await alice.send_text(room_id, "next")
    later = sent_events(stub, room_id)[-1]["content"]
    assert later["session_id"] == stored["content"]["session_id"]
    assert megolm_message_index(later["ciphertext"]) == 1
    seen = await bob.wait_for_event(room_id, first)
    assert seen["content"] == content


@pytest.mark.parametrize(
    ("method", "prefix", "with_txn"),
    [
        ("POST", "v3", False),
        ("POST", "r0", False),
        ("PUT", "unstable", True),
        ("PUT", "api/v1", True),
        ("POST", "api/v1", False),
    ],
)
async def test_every_form_of_send_the_server_accepts_is_encrypted(
    stub: StubHomeserver,
    session: aiohttp.ClientSession,
    start_e2ee_proxy: StartE2EEProxy,
    method: str,
    prefix: str,
    with_txn: bool,
) -> None:
    """Synapse also takes a txn-less POST and the api/v1 and unstable prefixes: none of them
    may carry plaintext past the proxy."""
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    path = f"/_matrix/client/{prefix}/rooms/{room_id}/send/m.room.message"
    if with_txn:
        path += "/txn-variant"
    content = {"msgtype": "m.text", "body": f"via {method} {prefix}"}
    answer = await alice.call(method, path, content)
    (stored,) = sent_events(stub, room_id)
    assert stored["event_id"] == answer["event_id"]
    assert_ciphertext_only(stub.raw_events(room_id))
    seen = await bob.wait_for_event(room_id, answer["event_id"])
    assert seen["content"] == content


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("PUT", "/m.room.message/txn/extra"), ("GET", "/m.room.message/txn"), ("PUT", "")],
)
async def test_any_other_shape_of_send_is_refused_not_forwarded(
    stub: StubHomeserver,
    session: aiohttp.ClientSession,
    start_e2ee_proxy: StartE2EEProxy,
    method: str,
    suffix: str,
) -> None:
    _, (alice,) = await proxied(stub, session, start_e2ee_proxy, "alice")
    room_id = await encrypted_room_of(alice)
    status, body = await alice.request(
        method, f"/_matrix/client/v3/rooms/{room_id}/send{suffix}", {"body": "secret"}
    )
    assert status == 400 and body["errcode"] == "M_UNRECOGNIZED", body
    assert stub.requests_to(r"/rooms/[^/]*/send") == []
    assert sent_events(stub, room_id) == []


async def test_created_encrypted_room_first_message_reaches_the_invitee(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await alice.create_room(invite=[bob.user_id], initial_state=[encryption_state()])
    # No /sync in between: the proxy knows from createRoom that the room is encrypted.
    event_id = await alice.send_text(room_id, "first words")
    assert_ciphertext_only(stub.raw_events(room_id))
    assert (bob.user_id, bob.device_id) in to_device_recipients(stub.requests)
    await bob.join(room_id)
    seen = await bob.wait_for_event(room_id, event_id)
    assert seen["type"] == "m.room.message"
    assert seen["content"] == {"msgtype": "m.text", "body": "first words"}


@pytest.mark.parametrize(
    "content",
    [
        {"msgtype": "m.file", "body": "plan.pdf", "url": "mxc://stub.test/plainfile"},
        {
            "msgtype": "m.image",
            "body": "cat.png",
            "file": {"url": "mxc://stub.test/encrypted", "v": "v2"},
            "info": {"thumbnail_url": "mxc://stub.test/plainthumb"},
        },
    ],
    ids=["url", "thumbnail_url"],
)
async def test_plaintext_file_into_encrypted_room_is_refused(
    stub: StubHomeserver,
    session: aiohttp.ClientSession,
    start_e2ee_proxy: StartE2EEProxy,
    content: dict[str, Any],
) -> None:
    """By default no file that was ever plaintext on the server enters an encrypted room."""
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    status, body = await alice.send_raw(room_id, content)
    assert 400 <= status < 500, body
    assert isinstance(body, dict) and body.get("errcode") == "M_FORBIDDEN", body
    assert "unencrypted" in body.get("error", "").lower(), body
    assert sent_events(stub, room_id) == []


async def test_file_already_on_the_server_in_plaintext_goes_in_as_an_encrypted_copy(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """With plaintext_files = "copy", a bridge relaying a file that is on the server in
    plaintext gets an encrypted copy into the room, and no event there names the plaintext."""
    _, (alice, bob) = await proxied(
        stub, session, start_e2ee_proxy, "alice", "bob",
        encryption=EncryptionConfig(plaintext_files="copy"),
    )
    room_id = await encrypted_room_of(alice, bob)
    data = b"a public file, relayed " * 50
    assert stub.base_url is not None
    direct = PlainClient(session, stub.base_url, alice.access_token)
    plain_mxc = await upload_media(direct, data, "text/plain", filename="public.txt")
    content = {"msgtype": "m.file", "body": "public.txt", "url": plain_mxc}
    event_id = await alice.send(room_id, content)

    raw = json.dumps(stub.raw_events(room_id))
    assert plain_mxc not in raw and "public.txt" not in raw
    assert_ciphertext_only(stub.raw_events(room_id))
    seen = await bob.wait_for_event(room_id, event_id)
    copy = seen["content"]["file"]["url"]
    assert copy != plain_mxc
    stored = stub_media(stub, copy).content
    assert stored is not None and data[:20] not in stored and len(stored) == len(data)
    answer = await get_media(bob, copy)
    assert answer.status == 200 and answer.body == data


async def test_file_missing_from_the_server_sends_nothing(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    _, (alice, bob) = await proxied(
        stub, session, start_e2ee_proxy, "alice", "bob",
        encryption=EncryptionConfig(plaintext_files="copy"),
    )
    room_id = await encrypted_room_of(alice, bob)
    content = {"msgtype": "m.file", "body": "plan.pdf", "url": "mxc://stub.test/nosuchfile"}
    status, body = await alice.send_raw(room_id, content)
    assert 400 <= status < 500, body
    assert isinstance(body, dict) and body.get("errcode"), body
    assert sent_events(stub, room_id) == []


async def test_reactions_edits_replies_and_threads_are_encrypted_with_cleartext_relation(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    original = await alice.send_text(room_id, "original")
    relations = {
        "m.reaction": {"rel_type": "m.annotation", "event_id": original, "key": "👍"},
        "edit": {"rel_type": "m.replace", "event_id": original},
        "reply": {"m.in_reply_to": {"event_id": original}},
        "thread": {
            "rel_type": "m.thread",
            "event_id": original,
            "is_falling_back": True,
            "m.in_reply_to": {"event_id": original},
        },
    }
    sent: dict[str, tuple[str, dict[str, Any]]] = {}
    for kind, relation in relations.items():
        event_type = "m.reaction" if kind == "m.reaction" else "m.room.message"
        content: dict[str, Any] = {"m.relates_to": relation}
        if kind != "m.reaction":
            content.update({"msgtype": "m.text", "body": f"{kind} text"})
        if kind == "edit":
            content["m.new_content"] = {"msgtype": "m.text", "body": "edited"}
        event_id = await alice.send(room_id, content, event_type=event_type)
        sent[event_id] = (event_type, content)
    raw = {e["event_id"]: e for e in stub.raw_events(room_id)}
    assert_ciphertext_only(list(raw.values()))
    for event_id, (_, content) in sent.items():
        assert raw[event_id]["content"]["m.relates_to"] == content["m.relates_to"], event_id
        assert "body" not in raw[event_id]["content"]
    for event_id, (event_type, content) in sent.items():
        seen = await bob.wait_for_event(room_id, event_id)
        assert seen["type"] == event_type, seen
        assert seen["content"] == content, seen


async def test_unencrypted_room_send_goes_out_unchanged(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await alice.create_room(invite=[bob.user_id])
    await bob.join(room_id)
    content = {"msgtype": "m.text", "body": "in the clear", "x.custom": {"n": [1, 2]}}
    event_id = await alice.send(room_id, content, event_type="org.example.note")
    (stored,) = sent_events(stub, room_id)
    assert stored["event_id"] == event_id
    assert stored["type"] == "org.example.note" and stored["content"] == content
    assert to_device_recipients(stub.requests) == []
    seen = await bob.wait_for_event(room_id, event_id)
    assert seen["type"] == "org.example.note" and seen["content"] == content


async def test_rotation_period_msgs_gives_a_new_session_every_two_messages(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob, rotation_period_msgs=2)
    event_ids = [await alice.send_text(room_id, f"m{i}") for i in range(5)]
    stored = sent_events(stub, room_id)
    assert [e["event_id"] for e in stored] == event_ids
    sessions = [e["content"]["session_id"] for e in stored]
    assert sessions[0] == sessions[1] and sessions[2] == sessions[3], sessions
    assert len({sessions[0], sessions[2], sessions[4]}) == 3, sessions
    indices = [megolm_message_index(e["content"]["ciphertext"]) for e in stored]
    assert indices == [0, 1, 0, 1, 0]
    history = {e["event_id"]: e for e in await bob.messages(room_id)}
    for i, event_id in enumerate(event_ids):
        await bob.wait_for_event(room_id, event_id)
        assert history[event_id]["content"]["body"] == f"m{i}"


@pytest.mark.parametrize("where", ["proxy", "stub"])
async def test_member_who_left_gets_no_key_for_later_messages(
    stub: StubHomeserver,
    session: aiohttp.ClientSession,
    start_e2ee_proxy: StartE2EEProxy,
    where: str,
) -> None:
    _, (alice, bob, carol) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob", "carol")
    room_id = await encrypted_room_of(alice, bob, carol)
    before = await alice.send_text(room_id, "everyone")
    carol_device = (carol.user_id, carol.device_id)
    assert carol_device in to_device_recipients(stub.requests)
    if where == "proxy":
        await carol.leave(room_id)
    else:
        stub.room_ops.leave(stub.room(room_id), carol.user_id)
        # Alice's proxy learns it from her sync.
        await alice.sync_until(
            lambda: any(
                e["type"] == "m.room.member"
                and e["state_key"] == carol.user_id
                and e["content"]["membership"] == "leave"
                for e in alice.timeline(room_id)
            ),
            "Carol's leave",
        )
    mark = len(stub.requests)
    after = await alice.send_text(room_id, "without carol")
    stored = {e["event_id"]: e["content"] for e in sent_events(stub, room_id)}
    assert stored[after]["session_id"] != stored[before]["session_id"], "no rotation on leave"
    recipients = to_device_recipients(stub.requests, mark)
    assert (bob.user_id, bob.device_id) in recipients
    assert carol_device not in recipients
    seen = await bob.wait_for_event(room_id, after)
    assert seen["content"]["body"] == "without carol"


@pytest.mark.parametrize("visibility", ["joined", "shared"])
async def test_invitees_get_the_key_unless_history_is_for_joined_members_only(
    stub: StubHomeserver,
    session: aiohttp.ClientSession,
    start_e2ee_proxy: StartE2EEProxy,
    visibility: str,
) -> None:
    _, (alice, bob) = await proxied(
        stub, session, start_e2ee_proxy, "alice", "bob",
        encryption=EncryptionConfig(missing_key_wait=0.2),
    )
    room_id = await alice.create_room(
        invite=[bob.user_id],
        initial_state=[
            encryption_state(),
            {"type": "m.room.history_visibility", "state_key": "",
             "content": {"history_visibility": visibility}},
        ],
    )
    before = len(stub.requests)
    early = await alice.send_text(room_id, "said while bob is only invited")
    keyed = [user for user, _ in to_device_recipients(stub.requests, before)]
    await bob.join(room_id)

    def bob_joined() -> bool:
        return any(
            e.get("type") == "m.room.member" and e.get("state_key") == bob.user_id
            and e.get("content", {}).get("membership") == "join"
            for body in alice.sync_bodies
            for e in body.get("rooms", {}).get("join", {}).get(room_id, {})
            .get("timeline", {}).get("events", [])
        )

    # Alice's side learns of the join from a sync, as any client does, before she writes again.
    await alice.sync_until(bob_joined, "bob's join")
    later = await alice.send_text(room_id, "said after bob joined")
    assert (await bob.wait_for_event(room_id, later))["content"]["body"] == "said after bob joined"
    seen_early = await bob.event(room_id, early)
    if visibility == "joined":
        assert bob.user_id not in keyed
        assert seen_early["content"]["msgtype"] == "m.notice", seen_early
    else:
        assert bob.user_id in keyed
        assert seen_early["content"]["body"] == "said while bob is only invited"
