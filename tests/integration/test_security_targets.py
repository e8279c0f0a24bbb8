"""The listener as an attacker on the same host uses it (#16): request lines written by hand over
a socket, against the real app in front of the stub homeserver."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
import pytest

from tests.integration.conftest import StartE2EEProxy
from tests.support.background import client_made
from tests.support.plain_client import login_all
from tests.support.raw_http import raw_request
from tests.support.stub_homeserver import StubHomeserver, running_stub

LOGIN = "/_matrix/client/v3/login"


@pytest.fixture
async def elsewhere() -> AsyncIterator[StubHomeserver]:
    """Another homeserver on this host: where a redirected request would land."""
    async with running_stub(StubHomeserver("elsewhere.test")) as served:
        yield served


async def test_absolute_form_targets_are_refused_and_reach_no_server(
    stub: StubHomeserver, elsewhere: StubHomeserver, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """`POST pany://x/_matrix/client/v3/login` is routed by path as a login; joined onto
    https://matrix.example.com it went to matrix.example.company, whose answer then rebound an
    account. Only a plain path is served; nothing goes to any server."""
    proxy = await start_e2ee_proxy()
    stub.register("alice", "pw")
    elsewhere.register("alice", "pw")
    assert elsewhere.base_url is not None
    login = json.dumps({
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "pw",
    }).encode()
    for method, target in (
        ("POST", "pany://x" + LOGIN),
        ("POST", elsewhere.base_url + LOGIN),
        ("GET", elsewhere.base_url + "/_matrix/client/v3/account/whoami"),
        ("GET", "http://x/_matrix/client/versions"),
    ):
        answer = await raw_request(
            proxy.url,
            f"{method} {target} HTTP/1.1",
            {"Content-Type": "application/json", "Authorization": "Bearer secret-token"},
            login if method == "POST" else b"",
        )
        assert (answer.status, answer.errcode) == (400, "M_UNRECOGNIZED"), (target, answer)
    assert stub.requests == []
    assert elsewhere.requests == []

    # The same login as a plain path is served as ever.
    answer = await raw_request(
        proxy.url, f"POST {LOGIN} HTTP/1.1", {"Content-Type": "application/json"}, login
    )
    assert answer.status == 200, answer
    assert answer.json["user_id"] == "@alice:stub.test"


async def test_dot_segments_and_merged_slashes_cannot_hide_a_send_or_an_upload(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """A path-normalising hop before the homeserver (nginx with a URI in proxy_pass resolves
    dot segments, decodes and merges slashes) would turn these into a send or an upload the
    proxy never saw as one: refused, nothing forwarded."""
    proxy = await start_e2ee_proxy()
    (alice,) = await login_all(session, proxy.url, stub, "alice")
    room = quote(await alice.create_encrypted_room(), safe="")
    rooms = "/_matrix/client/v3/rooms"
    headers = {"Authorization": f"Bearer {alice.access_token}", "Content-Type": "text/plain"}
    secret = json.dumps({"msgtype": "m.text", "body": "plaintext for the server"}).encode()
    before = len(stub.requests)
    for method, target in (
        ("PUT", f"{rooms}/{room}/x/../send/m.room.message/t1"),
        ("PUT", f"{rooms}/{room}/x/%2e%2E/send/m.room.message/t2"),
        ("PUT", f"{rooms}/{room}/./send/m.room.message/t3"),
        ("PUT", f"{rooms}/{room}//send/m.room.message/t4"),
        ("PUT", f"{rooms}/{room}/%2Fsend/m.room.message/t5"),
        ("POST", "/_matrix/client/v3/x/../../media/v3/upload"),
    ):
        answer = await raw_request(proxy.url, f"{method} {target} HTTP/1.1", headers, secret)
        assert (answer.status, answer.errcode) == (400, "M_UNRECOGNIZED"), (target, answer)
    assert client_made(stub, before) == []

    # An encoded slash inside a segment is no new segment: a bridge's state key keeps working.
    state_key = quote("fi.mau.example://network/123", safe="")
    answer = await raw_request(
        proxy.url,
        f"PUT {rooms}/{room}/state/m.bridge/{state_key} HTTP/1.1",
        {**headers, "Content-Type": "application/json"},
        b'{"bridgebot": "@bot:stub.test"}',
    )
    assert answer.status == 200, answer


async def test_the_client_cannot_choose_the_address_the_homeserver_sees(
    stub: StubHomeserver, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """A homeserver that trusts X-Forwarded-For (Synapse with `x_forwarded`) logs, rate-limits
    and bans by it: it names the peer the proxy saw, never what the client claimed."""
    proxy = await start_e2ee_proxy()
    claims = {
        "X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.7",
        "Forwarded": "for=203.0.113.7;proto=https", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "matrix.example.org",
    }
    for path in ("/_matrix/client/versions", "/_matrix/client/v3/login"):
        answer = await raw_request(proxy.url, f"GET {path} HTTP/1.1", claims)
        assert answer.status == 200, answer
        [seen] = stub.requests_to(path + "$")
        headers = {name.lower(): value for name, value in seen.headers.items()}
        assert headers.get("x-forwarded-for") == "127.0.0.1", headers
        assert not {"x-real-ip", "forwarded", "x-forwarded-proto", "x-forwarded-host"} & set(
            headers
        ), headers


async def test_only_host_names_of_the_proxy_are_served(
    stub: StubHomeserver, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """DNS rebinding: a web page makes its own domain resolve to 127.0.0.1, and its scripts then
    reach the listener with that domain as Host. Addresses, localhost, public_url's host and
    the configured names are served; nothing else is forwarded."""
    proxy = await start_e2ee_proxy(public_url="https://proxy.example", allowed_hosts=("bot.lan",))
    port = proxy.url.rsplit(":", 1)[1]
    versions = "GET /_matrix/client/versions HTTP/1.1"
    for host in ("rebound.evil.example", f"rebound.evil.example:{port}", "localhost.evil"):
        answer = await raw_request(proxy.url, versions, {"Host": host})
        assert (answer.status, answer.errcode) == (403, "M_FORBIDDEN"), (host, answer)
    assert stub.requests_to(r"/versions$") == []
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "proxy.example", f"bot.lan:{port}"):
        answer = await raw_request(proxy.url, versions, {"Host": host})
        assert answer.status == 200, (host, answer)
