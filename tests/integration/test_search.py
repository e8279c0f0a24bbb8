"""/search through the proxy: the search term reaches the server only for rooms the server says
are unencrypted; encrypted ones (and any room in doubt) are left out and named in the answer,
and a search of encrypted rooms only is refused with nothing sent."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.integration.conftest import StartE2EEProxy, proxied
from tests.support.plain_client import PlainClient, encrypted_room_of
from tests.support.stub_homeserver import StubHomeserver

SEARCH = "/_matrix/client/v3/search"
NOT_SEARCHED = "org.e2eproxy.rooms_not_searched"


def _search_body(term: str, **room_filter: Any) -> dict[str, Any]:
    criteria: dict[str, Any] = {"search_term": term, "order_by": "recent"}
    if room_filter:
        criteria["filter"] = room_filter
    return {"search_categories": {"room_events": criteria}}


async def _rooms(alice: PlainClient, bob: PlainClient) -> tuple[str, str]:
    encrypted = await encrypted_room_of(alice, bob)
    await alice.send_text(encrypted, "the secret launch plan")
    plain = await alice.create_room(invite=[bob.user_id])
    await bob.join(plain)
    await alice.send_text(plain, "the public launch plan")
    return encrypted, plain


def _terms_sent(stub: StubHomeserver) -> list[Any]:
    return [r.json for r in stub.requests_to(r"/search$", "POST")]


async def test_the_search_term_reaches_the_server_only_for_unencrypted_rooms(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    encrypted, plain = await _rooms(alice, bob)

    # Every room (no filter): the server is asked about the unencrypted room only.
    answer = await bob.call("POST", SEARCH, _search_body("launch"))
    [sent] = _terms_sent(stub)
    assert sent["search_categories"]["room_events"]["filter"]["rooms"] == [plain], sent
    room_events = answer["search_categories"]["room_events"]
    assert [r["result"]["content"]["body"] for r in room_events["results"]] == [
        "the public launch plan"
    ]
    assert room_events[NOT_SEARCHED] == [encrypted]

    # Named rooms, one of each: the same.
    answer = await bob.call("POST", SEARCH, _search_body("launch", rooms=[encrypted, plain]))
    assert _terms_sent(stub)[-1]["search_categories"]["room_events"]["filter"]["rooms"] == [
        plain
    ]

    # The encrypted room alone: refused, and nothing reaches the server.
    before = len(_terms_sent(stub))
    status, error = await bob.request("POST", SEARCH, _search_body("secret", rooms=[encrypted]))
    assert status == 400 and error["errcode"] == "M_UNRECOGNIZED", error
    assert "encrypted" in error["error"], error
    assert len(_terms_sent(stub)) == before
    assert all("secret" not in str(body) for body in _terms_sent(stub))


async def test_a_room_whose_encryption_is_in_doubt_is_not_searched(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    _, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    _, plain = await _rooms(alice, bob)
    stub.faults.add(r"/state/m\.room\.encryption", status=500)
    status, error = await bob.request("POST", SEARCH, _search_body("launch", rooms=[plain]))
    assert status == 400 and error["errcode"] == "M_UNRECOGNIZED", error
    assert _terms_sent(stub) == []
