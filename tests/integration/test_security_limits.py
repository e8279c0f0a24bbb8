"""Request bodies have bounds (#16, item 3): the ones the proxy reads whole, the uploads it
holds, what a compressed body may become, and nothing read at all without a token."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiohttp

from tests.integration.conftest import StartE2EEProxy
from tests.support.background import is_background
from tests.support.plain_client import V3, PlainClient, forwarded, login_all
from tests.support.raw_http import raw_request
from tests.support.stub_homeserver import StubHomeserver
from tests.support.wire import raw_messages


def auth(client: PlainClient, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.access_token}", **extra}


def send_path(room_id: str, txn: str) -> str:
    return f"{V3}/rooms/{quote(room_id, safe='')}/send/m.room.message/{txn}"


async def test_bodies_the_proxy_reads_are_bounded(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    proxy = await start_e2ee_proxy()
    (alice,) = await login_all(session, proxy.url, stub, "alice")
    room_id = await alice.create_encrypted_room()
    before = len(stub.requests)
    huge = {"msgtype": "m.text", "body": "x" * (2 * 1024 * 1024)}
    for method, path in (("PUT", send_path(room_id, "t1")), ("POST", f"{V3}/createRoom")):
        async with session.request(
            method, proxy.url + path, json=huge, headers=auth(alice)
        ) as response:
            assert response.status == 413, await response.text()
            assert (await response.json())["errcode"] == "M_TOO_LARGE"
    assert forwarded(stub, before, "/send/", "/createRoom") == []
    assert raw_messages(stub.raw_events(room_id)) == []

    # The bound is the operator's to set.
    small = await start_e2ee_proxy(max_json_body=4096)
    status, body = await PlainClient(session, small.url, alice.access_token).request(
        "PUT", send_path(room_id, "t2"), {"msgtype": "m.text", "body": "y" * 5000}
    )
    assert (status, body["errcode"]) == (413, "M_TOO_LARGE"), body


async def test_a_compressed_body_is_never_inflated(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """A few kB of gzip inflate to megabytes: refused where the proxy would read it, passed on
    as sent where it only forwards."""
    proxy = await start_e2ee_proxy()
    (alice,) = await login_all(session, proxy.url, stub, "alice")
    room_id = await alice.create_encrypted_room()
    bomb = gzip.compress(json.dumps({"msgtype": "m.text", "body": " " * 4_000_000}).encode())
    assert len(bomb) < 10_000
    before = len(stub.requests)
    for path in (send_path(room_id, "gz"), "/_matrix/media/v3/upload"):
        method = "PUT" if "/send/" in path else "POST"
        async with session.request(
            method, proxy.url + path, data=bomb,
            headers=auth(alice, **{"Content-Encoding": "gzip", "Content-Type": "text/plain"}),
        ) as response:
            assert response.status == 415, await response.text()
            assert (await response.json())["errcode"] == "M_UNRECOGNIZED"
    assert forwarded(stub, before, "/send/", "/media/") == []
    assert raw_messages(stub.raw_events(room_id)) == []

    # Passed on, it reaches the homeserver compressed, as the client sent it.
    small = gzip.compress(json.dumps({"room": {"timeline": {"limit": 3}}}).encode())
    async with session.post(
        f"{proxy.url}{V3}/user/{quote(alice.user_id)}/filter", data=small,
        headers=auth(alice, **{"Content-Encoding": "gzip", "Content-Type": "application/json"}),
    ) as response:
        assert response.status == 200, await response.text()
    [received] = [r for r in stub.requests_to(r"/filter$", "POST") if not is_background(r)]
    assert received.headers.get("Content-Encoding") == "gzip"
    assert received.json == {"room": {"timeline": {"limit": 3}}}


async def test_uploads_are_held_only_up_to_the_configured_size(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy,
    tmp_path: Path,
) -> None:
    """A server that names no m.upload.size no longer means no limit on what the proxy spools."""
    for path in ("/_matrix/client/v1/media/config", "/_matrix/media/v3/config"):
        stub.faults.add(path + "$", status=200, body={})
    proxy = await start_e2ee_proxy(max_upload_size=1000)
    (alice,) = await login_all(session, proxy.url, stub, "alice")
    before = len(stub.requests)
    for chunked in (False, True):  # announced too large, and found too large while streaming
        data: bytes | AsyncIterator[bytes] = b"z" * 5000
        if chunked:
            async def stream() -> AsyncIterator[bytes]:
                for _ in range(5):
                    yield b"z" * 1000
            data = stream()
        async with session.post(
            f"{proxy.url}/_matrix/media/v3/upload", data=data,
            headers=auth(alice, **{"Content-Type": "application/octet-stream"}),
        ) as response:
            assert response.status == 413, await response.text()
            assert (await response.json())["errcode"] == "M_TOO_LARGE"
    assert forwarded(stub, before, "/upload", "/create") == []
    spool = tmp_path / "proxy" / "media"
    assert not spool.exists() or list(spool.iterdir()) == []


async def test_without_a_token_nothing_is_read_or_forwarded(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """createRoom, state and profile bodies were read whole before the token was looked at (and
    then forwarded): now the missing token is the answer, before any byte of the body."""
    proxy = await start_e2ee_proxy()
    (alice,) = await login_all(session, proxy.url, stub, "alice")
    room = quote(await alice.create_room(), safe="")
    before = len(stub.requests)
    for method, path in (
        ("POST", f"{V3}/createRoom"),
        ("PUT", f"{V3}/rooms/{room}/state/m.room.topic/"),
        ("PUT", f"{V3}/profile/{quote(alice.user_id)}/displayname"),
    ):
        # A megabyte announced, two bytes sent: an answer proves nothing waited for the rest.
        answer = await raw_request(
            proxy.url, f"{method} {path} HTTP/1.1",
            {"Content-Type": "application/json", "Content-Length": str(1024 * 1024)}, b"{}",
        )
        assert (answer.status, answer.errcode) == (401, "M_MISSING_TOKEN"), (path, answer)
    assert forwarded(stub, before, "/createRoom", "/state/", "/profile/") == []
