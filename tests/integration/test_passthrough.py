"""The pass-through: what the client sends arrives unchanged, and what the server answers returns
unchanged, except for hop-by-hop headers and CORS, which the proxy owns."""

from __future__ import annotations

import json

import aiohttp
import pytest
from yarl import URL

from tests.integration.conftest import StartProxy
from tests.support.processes import free_port
from tests.support.stub_homeserver import StubHomeserver

V3 = "/_matrix/client/v3"


async def login(http: aiohttp.ClientSession, base: str, stub: StubHomeserver, name: str) -> str:
    stub.register(name, "pw")
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": name},
        "password": "pw",
    }
    async with http.post(f"{base}{V3}/login", json=body) as response:
        assert response.status == 200
        token: str = (await response.json())["access_token"]
        return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_every_method_reaches_the_server_and_answers_come_back(
    stub: StubHomeserver, exact_session: aiohttp.ClientSession, proxy_url: str
) -> None:
    token = await login(exact_session, proxy_url, stub, "alice")
    auth = bearer(token)
    async with exact_session.get(f"{proxy_url}{V3}/account/whoami", headers=auth) as response:
        assert response.status == 200
        assert (await response.json())["user_id"] == "@alice:stub.test"
    async with exact_session.post(
        f"{proxy_url}{V3}/createRoom", json={"name": "r"}, headers=auth
    ) as r:
        room_id = (await r.json())["room_id"]
    async with exact_session.put(
        f"{proxy_url}{V3}/rooms/{room_id}/send/m.room.message/t1",
        json={"msgtype": "m.text", "body": "hello"},
        headers=auth,
    ) as response:
        assert response.status == 200
        event_id = (await response.json())["event_id"]
    async with exact_session.put(
        f"{proxy_url}{V3}/room_keys/version/1", json={}, headers=auth
    ) as r:
        assert r.status in (404, 400)  # no backup yet: the server's own answer passes through
    async with exact_session.post(
        f"{proxy_url}{V3}/room_keys/version",
        headers=auth,
        json={"algorithm": "m.megolm_backup.v1", "auth_data": {}},
    ) as r:
        version = (await r.json())["version"]
    async with exact_session.delete(
        f"{proxy_url}{V3}/room_keys/version/{version}", headers=auth
    ) as r:
        assert r.status == 200
    assert [e["event_id"] for e in stub.raw_events(room_id)][-1] == event_id
    assert stub.raw_events(room_id)[-1]["content"] == {"msgtype": "m.text", "body": "hello"}
    methods = {(r.method, r.path.split("/")[4]) for r in stub.requests}
    assert {("GET", "account"), ("PUT", "rooms"), ("DELETE", "room_keys")} <= methods


async def test_query_string_is_forwarded_byte_for_byte(
    stub: StubHomeserver, exact_session: aiohttp.ClientSession, proxy_url: str
) -> None:
    raw = f"{V3}/publicRooms?filter=%7B%22a%22%3A%201%7D&since=s%2F1&x=a+b&x=%C3%A9&empty="
    # encoded=True: the test client itself must not normalise the query either.
    async with exact_session.get(
        URL(proxy_url + raw, encoded=True), headers=bearer("none")
    ) as response:
        await response.read()
    assert stub.requests[-1].raw_path == raw


async def test_headers_client_to_server(
    stub: StubHomeserver, exact_session: aiohttp.ClientSession, proxy_url: str
) -> None:
    headers = {
        "Authorization": "Bearer tok",
        "X-Custom": "kept",
        "User-Agent": "plainclient/1.0",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "must not pass",
        "Proxy-Authorization": "Basic c2VjcmV0",
    }
    async with exact_session.get(f"{proxy_url}{V3}/account/whoami", headers=headers) as response:
        await response.read()
    seen = {k.lower(): v for k, v in stub.requests[-1].headers.items()}
    assert seen["authorization"] == "Bearer tok"
    assert seen["x-custom"] == "kept"
    assert seen["user-agent"] == "plainclient/1.0"
    assert "x-hop" not in seen
    assert "proxy-authorization" not in seen
    assert seen["host"] == stub.base_url.removeprefix("http://") if stub.base_url else False


async def test_status_codes_and_error_bodies_pass_through(
    stub: StubHomeserver, exact_session: aiohttp.ClientSession, proxy_url: str
) -> None:
    token = await login(exact_session, proxy_url, stub, "bob")
    path = f"{V3}/rooms/!nope:stub.test/state"
    async with exact_session.get(f"{stub.base_url}{path}", headers=bearer(token)) as r:
        direct = (r.status, await r.read())
    async with exact_session.get(f"{proxy_url}{path}", headers=bearer(token)) as r:
        assert (r.status, await r.read()) == direct
    assert direct[0] >= 400
    stub.faults.add(r"/account/whoami", status=429, retry_after_ms=1234, times=1)
    async with exact_session.get(f"{proxy_url}{V3}/account/whoami", headers=bearer(token)) as r:
        assert r.status == 429
        assert await r.json() == {
            "errcode": "M_LIMIT_EXCEEDED",
            "error": "Injected fault (429)",
            "retry_after_ms": 1234,
        }
    stub.faults.add(r"/account/whoami", status=500, errcode="M_UNKNOWN", error="boom", times=1)
    async with exact_session.get(f"{proxy_url}{V3}/account/whoami", headers=bearer(token)) as r:
        assert r.status == 500
        assert await r.json() == {"errcode": "M_UNKNOWN", "error": "boom"}


async def test_response_headers_pass_through_and_media_streams_back(
    stub: StubHomeserver, exact_session: aiohttp.ClientSession, proxy_url: str
) -> None:
    token = await login(exact_session, proxy_url, stub, "carol")
    payload = bytes(range(256)) * 4096
    async with exact_session.post(
        f"{proxy_url}/_matrix/media/v3/upload?filename=r%C3%A9sum%C3%A9.bin",
        data=payload,
        headers={**bearer(token), "Content-Type": "application/x-test"},
    ) as response:
        assert response.status == 200
        mxc = (await response.json())["content_uri"]
    server_name, media_id = mxc.removeprefix("mxc://").split("/")
    async with exact_session.get(
        f"{proxy_url}/_matrix/client/v1/media/download/{server_name}/{media_id}",
        headers=bearer(token),
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-test"
        assert "Content-Disposition" in response.headers
        assert await response.read() == payload


async def test_no_cors_header_unless_configured(
    stub: StubHomeserver, exact_session: aiohttp.ClientSession, start_proxy: StartProxy
) -> None:
    plain = await start_proxy()
    listed = await start_proxy(cors_origins=("https://app.example",))
    origin = {"Origin": "https://app.example"}
    async with exact_session.get(f"{plain}/_matrix/client/versions", headers=origin) as response:
        assert "Access-Control-Allow-Origin" not in response.headers
    async with exact_session.get(f"{listed}/_matrix/client/versions", headers=origin) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    other = {"Origin": "https://evil.example"}
    async with exact_session.get(f"{listed}/_matrix/client/versions", headers=other) as response:
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_well_known_points_clients_at_the_proxy(
    exact_session: aiohttp.ClientSession, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy()
    async with exact_session.get(f"{proxy}/.well-known/matrix/client") as response:
        assert response.status == 200
        document = json.loads(await response.read())
    assert document["m.homeserver"]["base_url"].startswith("http://127.0.0.1:")
    public = await start_proxy(public_url="https://matrix-proxy.example")
    async with exact_session.get(f"{public}/.well-known/matrix/client") as response:
        document = json.loads(await response.read())
    assert document == {"m.homeserver": {"base_url": "https://matrix-proxy.example"}}


async def test_unknown_paths_get_matrix_json(
    exact_session: aiohttp.ClientSession, proxy_url: str
) -> None:
    async with exact_session.get(f"{proxy_url}/not-matrix") as response:
        assert response.status == 404
        assert await response.json() == {
            "errcode": "M_UNRECOGNIZED",
            "error": "Unrecognized request",
        }


async def test_upstream_down_is_a_502_json_and_the_proxy_keeps_serving(
    exact_session: aiohttp.ClientSession, start_proxy: StartProxy
) -> None:
    # A port just released: nothing listens there.
    proxy = await start_proxy(homeserver=f"http://127.0.0.1:{free_port()}")
    for _ in range(2):
        async with exact_session.get(f"{proxy}/_matrix/client/versions") as response:
            assert response.status == 502
            body = await response.json()
            assert body["errcode"] == "M_UNKNOWN"
            assert "reach the homeserver" in body["error"]


async def test_upstream_slow_is_a_504_json(
    stub: StubHomeserver, exact_session: aiohttp.ClientSession, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy(upstream_timeout=0.3)
    stub.faults.add(r"/versions", delay=2.0, times=1)
    async with exact_session.get(f"{proxy}/_matrix/client/versions") as response:
        assert response.status == 504
        assert (await response.json())["errcode"] == "M_UNKNOWN"
    async with exact_session.get(f"{proxy}/_matrix/client/versions") as response:
        assert response.status == 200


async def test_upstream_dropping_the_connection_is_a_502(
    stub: StubHomeserver, exact_session: aiohttp.ClientSession, proxy_url: str
) -> None:
    # aiohttp retries an idempotent request once on a reused connection, so drop every time.
    fault = stub.faults.add(r"/versions", drop=True)
    async with exact_session.get(f"{proxy_url}/_matrix/client/versions") as response:
        assert response.status == 502
        assert (await response.json())["errcode"] == "M_UNKNOWN"
    stub.faults.faults.remove(fault)
    async with exact_session.get(f"{proxy_url}/_matrix/client/versions") as response:
        assert response.status == 200


async def test_long_poll_sync_may_outlast_the_upstream_timeout(
    stub: StubHomeserver, exact_session: aiohttp.ClientSession, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy(upstream_timeout=0.3)
    token = await login(exact_session, proxy, stub, "dave")
    async with exact_session.get(f"{proxy}{V3}/sync", headers=bearer(token)) as response:
        since = (await response.json())["next_batch"]
    async with exact_session.get(
        f"{proxy}{V3}/sync?since={since}&timeout=800", headers=bearer(token)
    ) as response:
        assert response.status == 200
        assert (await response.json())["next_batch"]


@pytest.mark.parametrize("prefix", ["/_matrix/client/r0", "/_matrix/client/v3"])
async def test_both_prefixes(
    stub: StubHomeserver, exact_session: aiohttp.ClientSession, proxy_url: str, prefix: str
) -> None:
    stub.register("erin", "pw")
    body = {"type": "m.login.password", "user": "erin", "password": "pw"}
    async with exact_session.post(f"{proxy_url}{prefix}/login", json=body) as response:
        assert response.status == 200
        assert (await response.json())["user_id"] == "@erin:stub.test"


async def test_get_and_head_of_a_file_just_uploaded(
    stub: StubHomeserver, exact_session: aiohttp.ClientSession, proxy_url: str
) -> None:
    """An upload is held by the proxy until it is sent somewhere: GET and HEAD are answered
    here (the server would wait for content it does not have yet), HEAD without a body."""
    token = await login(exact_session, proxy_url, stub, "dave")
    payload = b"small file \x00\xff" * 100
    async with exact_session.post(
        f"{proxy_url}/_matrix/media/v3/upload?filename=a.bin",
        data=payload,
        headers={**bearer(token), "Content-Type": "application/x-small"},
    ) as response:
        mxc = (await response.json())["content_uri"]
    server_name, media_id = mxc.removeprefix("mxc://").split("/")
    url = f"{proxy_url}/_matrix/client/v1/media/download/{server_name}/{media_id}"
    async with exact_session.get(url, headers=bearer(token)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-small"
        assert "Content-Disposition" in response.headers
        assert response.headers["Content-Length"] == str(len(payload))
        assert await response.read() == payload
    async with exact_session.head(url, headers=bearer(token)) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(len(payload))
