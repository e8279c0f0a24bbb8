"""The listener as an attacker on the same host uses it (#16): request lines written by hand over
a socket, against the real app in front of the stub homeserver."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from tests.integration.conftest import StartE2EEProxy
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

