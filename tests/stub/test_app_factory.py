"""The app factory also works under pytest-aiohttp's ``aiohttp_client``."""

from __future__ import annotations

from typing import Any

from tests.support.stub_homeserver import STUB_KEY, StubHomeserver, create_stub_app


async def test_factory_with_aiohttp_client(aiohttp_client: Any) -> None:
    stub = StubHomeserver(server_name="example.org", omit_empty_sync_fields=False)
    app = create_stub_app(stub)
    assert app[STUB_KEY] is stub
    client = await aiohttp_client(app)
    stub.register("alice", "pw")
    resp = await client.post("/_matrix/client/v3/login", json={
        "type": "m.login.password", "user": "alice", "password": "pw"})
    assert resp.status == 200
    login = await resp.json()
    assert login["user_id"] == "@alice:example.org"
    resp = await client.get("/_matrix/client/v3/sync",
                            headers={"Authorization": f"Bearer {login['access_token']}"})
    sync = await resp.json()
    assert sync["rooms"] == {"join": {}, "invite": {}, "leave": {}}
    assert sync["to_device"] == {"events": []}
    assert sync["device_lists"] == {"changed": [], "left": []}
