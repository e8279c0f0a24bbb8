"""A plain client (bare aiohttp, no E2EE) uses a real Synapse only through the e2eproxy
pass-through: login, rooms, invites, messages, sync, history, media and .well-known."""

from __future__ import annotations

import asyncio
import os
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.support.plain_client import PlainClient, RequestFailed, timeline_bodies
from tests.support.synapse import SynapseServer

pytestmark = pytest.mark.e2e


async def _logged_in(
    session: aiohttp.ClientSession, proxy_url: str, synapse: SynapseServer, localpart: str
) -> PlainClient:
    user = await synapse.register(localpart, password=f"{localpart}-password")
    client = PlainClient(session, proxy_url)
    answer = await client.login(localpart, f"{localpart}-password")  # bare localpart login
    assert answer["user_id"] == user.user_id
    assert answer["access_token"] != user.access_token  # a new device, logged in via the proxy
    return client


async def _sync_until(
    client: PlainClient, predicate: Any, attempts: int = 10, timeout_ms: int = 3000
) -> list[dict[str, Any]]:
    """Sync (long-polling) until predicate(list of sync answers so far) holds."""
    answers: list[dict[str, Any]] = []
    for _ in range(attempts):
        answers.append(await client.sync(timeout_ms=timeout_ms))
        if predicate(answers):
            return answers
    raise AssertionError(f"condition not met after {attempts} syncs: {answers[-1]}")


async def test_well_known_names_the_proxy(session: aiohttp.ClientSession, proxy_url: str) -> None:
    async with session.get(proxy_url + "/.well-known/matrix/client") as response:
        assert response.status == 200
        document = await response.json(content_type=None)
    assert document["m.homeserver"]["base_url"] == proxy_url


async def test_versions_pass_through(
    session: aiohttp.ClientSession, proxy_url: str, synapse: SynapseServer
) -> None:
    async with session.get(proxy_url + "/_matrix/client/versions") as via_proxy:
        assert via_proxy.status == 200
        proxied = await via_proxy.json()
    direct = await synapse.client_request("GET", "/_matrix/client/versions")
    assert proxied == direct


async def test_plain_client_conversation_through_the_proxy(
    session: aiohttp.ClientSession, proxy_url: str, synapse: SynapseServer, localpart: str
) -> None:
    alice = await _logged_in(session, proxy_url, synapse, f"{localpart}alice")
    bob = await _logged_in(session, proxy_url, synapse, f"{localpart}bob")
    assert (await alice.whoami())["device_id"] == alice.device_id

    room_id = await alice.create_room(preset="private_chat", name="plain room")
    await alice.invite(room_id, bob.user_id)

    await _sync_until(
        bob, lambda answers: room_id in answers[-1].get("rooms", {}).get("invite", {})
    )
    assert await bob.join_by_id_or_alias(room_id) == room_id

    sent = ["first plain message", "zweite Nachricht ✓", "third: 🙂"]
    event_ids = [await alice.send_text(room_id, body) for body in sent]

    def seen(answers: list[dict[str, Any]]) -> bool:
        bodies = [b for a in answers for b in timeline_bodies(a, room_id)]
        return bodies[-len(sent) :] == sent

    answers = await _sync_until(bob, seen)
    seen_bodies = [b for a in answers for b in timeline_bodies(a, room_id)]
    assert seen_bodies == sent

    # Alice's own sync (first one, no since) sees the room she created, with her messages.
    alice_sync = await alice.sync()
    assert timeline_bodies(alice_sync, room_id)[-len(sent) :] == sent

    # /messages history through the proxy, newest first, and identical to Synapse's own record.
    history = await bob.messages(room_id, limit=20)
    messages = [e for e in history if e["type"] == "m.room.message"]
    assert [e["content"]["body"] for e in messages] == sent[::-1]
    assert [e["event_id"] for e in messages] == event_ids[::-1]
    raw = await synapse.room_messages(bob.access_token, room_id, limit=20)  # type: ignore[arg-type]
    assert [e["event_id"] for e in raw] == [e["event_id"] for e in history]
    assert not any(e["type"] == "m.room.encryption" for e in raw)
    assert not any(e["type"] == "m.room.encrypted" for e in raw)

    members = await alice.call(
        "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/joined_members"
    )
    assert set(members["joined"]) == {alice.user_id, bob.user_id}


async def test_long_poll_sync_wakes_up_through_the_proxy(
    session: aiohttp.ClientSession, proxy_url: str, synapse: SynapseServer, localpart: str
) -> None:
    alice = await _logged_in(session, proxy_url, synapse, f"{localpart}alice")
    room_id = await alice.create_room(preset="private_chat")
    await alice.sync()

    waiting = asyncio.create_task(alice.sync(timeout_ms=20_000))
    await asyncio.sleep(0.5)
    assert not waiting.done()  # the proxy holds the long poll open
    await alice.send_text(room_id, "wake up")
    answer = await asyncio.wait_for(waiting, 10)
    assert timeline_bodies(answer, room_id) == ["wake up"]


async def test_errors_pass_through_unchanged(
    session: aiohttp.ClientSession, proxy_url: str, synapse: SynapseServer, localpart: str
) -> None:
    await synapse.register(localpart, password="right")
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": localpart},
        "password": "wrong",
    }
    with pytest.raises(RequestFailed) as wrong:
        await PlainClient(session, proxy_url).call("POST", "/_matrix/client/v3/login", body)
    assert wrong.value.status == 403
    assert wrong.value.body["errcode"] == "M_FORBIDDEN"

    stranger = PlainClient(session, proxy_url)
    stranger.access_token = "syt_not_a_real_token"
    with pytest.raises(RequestFailed) as unknown:
        await stranger.whoami()
    assert unknown.value.status == 401
    assert unknown.value.body["errcode"] == "M_UNKNOWN_TOKEN"


async def test_logout_through_the_proxy(
    session: aiohttp.ClientSession, proxy_url: str, synapse: SynapseServer, localpart: str
) -> None:
    client = await _logged_in(session, proxy_url, synapse, localpart)
    assert await client.call("POST", "/_matrix/client/v3/logout", {}) == {}
    with pytest.raises(RequestFailed) as gone:
        await client.whoami()
    assert gone.value.status == 401


async def test_media_upload_and_download_through_the_proxy(
    session: aiohttp.ClientSession, proxy_url: str, synapse: SynapseServer, localpart: str
) -> None:
    client = await _logged_in(session, proxy_url, synapse, localpart)
    auth = {"Authorization": f"Bearer {client.access_token}"}
    payload = os.urandom(3 * 1024 * 1024 + 17)

    async with session.post(
        proxy_url + "/_matrix/media/v3/upload",
        params={"filename": "noise.bin"},
        data=payload,
        headers={**auth, "Content-Type": "application/x-e2e-test"},
    ) as response:
        assert response.status == 200, await response.text()
        content_uri = (await response.json())["content_uri"]
    assert content_uri.startswith(f"mxc://{synapse.server_name}/")
    server_name, media_id = content_uri.removeprefix("mxc://").split("/", 1)
    download = f"/_matrix/client/v1/media/download/{server_name}/{media_id}"

    # e2eproxy holds an upload back until an event says where it goes: before that, the server
    # has reserved the id but holds no bytes, while the uploader already gets the file back.
    async with session.get(proxy_url + download, headers=auth) as response:
        assert response.status == 200, await response.text()
        assert await response.read() == payload
    async with session.get(synapse.base_url + download + "?timeout_ms=0", headers=auth) as direct:
        assert direct.status == 504  # M_NOT_YET_UPLOADED
    # Sent into an unencrypted room, it goes up once, in plaintext, as the client uploaded it.
    room_id = (await client.call("POST", "/_matrix/client/v3/createRoom", {}))["room_id"]
    await client.call(
        "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/file1",
        {"msgtype": "m.file", "body": "noise.bin", "url": content_uri},
    )
    async with session.get(synapse.base_url + download, headers=auth) as direct:
        assert direct.status == 200
        assert await direct.read() == payload

    # Authenticated media (Matrix 1.11), through the proxy: byte-identical.
    async with session.get(proxy_url + download, headers=auth) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("application/x-e2e-test")
        assert await response.read() == payload
    async with session.get(proxy_url + download + "/other-name.bin", headers=auth) as response:
        assert response.status == 200
        assert "other-name.bin" in response.headers.get("Content-Disposition", "")
        assert await response.read() == payload

    # Without a token the authenticated route refuses, and the refusal passes through.
    async with session.get(proxy_url + download) as response:
        assert response.status == 401
        assert (await response.json())["errcode"] == "M_MISSING_TOKEN"

    # Synapse 1.163 with enable_authenticated_media marks new uploads as authenticated, so the
    # legacy unauthenticated route answers 404; the proxy must hand that answer on unchanged.
    legacy = f"/_matrix/media/v3/download/{server_name}/{media_id}"
    async with session.get(synapse.base_url + legacy) as direct:
        direct_status, direct_body = direct.status, await direct.json()
    async with session.get(proxy_url + legacy) as proxied:
        proxied_status, proxied_body = proxied.status, await proxied.json()
    assert (proxied_status, proxied_body) == (direct_status, direct_body)
    assert direct_status == 404 and direct_body["errcode"] == "M_NOT_FOUND"


async def test_asynchronous_media_upload_through_the_proxy(
    session: aiohttp.ClientSession, proxy_url: str, synapse: SynapseServer, localpart: str
) -> None:
    """MSC2246 / Matrix 1.7: POST /_matrix/media/v1/create, then PUT the bytes."""
    client = await _logged_in(session, proxy_url, synapse, localpart)
    auth = {"Authorization": f"Bearer {client.access_token}"}
    async with session.post(proxy_url + "/_matrix/media/v1/create", headers=auth) as response:
        assert response.status == 200, await response.text()
        content_uri = (await response.json())["content_uri"]
    server_name, media_id = content_uri.removeprefix("mxc://").split("/", 1)

    payload = b"uploaded later\n" * 1000
    async with session.put(
        proxy_url + f"/_matrix/media/v3/upload/{server_name}/{media_id}",
        params={"filename": "later.txt"},
        data=payload,
        headers={**auth, "Content-Type": "text/plain"},
    ) as response:
        assert response.status == 200, await response.text()

    download = f"/_matrix/client/v1/media/download/{server_name}/{media_id}"
    async with session.get(proxy_url + download, headers=auth) as response:
        assert response.status == 200
        assert await response.read() == payload
