"""Fixtures for the stub homeserver's own tests: a tiny Matrix client (the served `stub` and the
client `session`: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.support.stub_homeserver import StubHomeserver

V3 = "/_matrix/client/v3"


class Api:
    """A minimal client: one access token, JSON in and out, no retries."""

    def __init__(
        self, http: aiohttp.ClientSession, base_url: str, token: str | None = None,
        user_id: str = "", device_id: str = "",
    ) -> None:
        self.http = http
        self.base_url = base_url
        self.token = token
        self.user_id = user_id
        self.device_id = device_id

    async def call(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None,
        *, data: bytes | None = None, headers: dict[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> tuple[int, Any]:
        """``path`` is relative to ``/_matrix/client/v3`` unless it starts with ``/_matrix``."""
        url = self.base_url + (path if path.startswith("/_matrix") else V3 + path)
        all_headers = dict(headers or {})
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        async with self.http.request(
            method, url, json=body, params=params, data=data, headers=all_headers,
            **({"timeout": timeout} if timeout is not None else {}),
        ) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.read()

    async def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        status, result = await self.call(method, path, body, **kwargs)
        assert status == 200, (method, path, status, result)
        return result

    async def sync(self, since: str | None = None, **params: str) -> dict[str, Any]:
        if since is not None:
            params["since"] = since
        result: dict[str, Any] = await self.ok("GET", "/sync", params=params)
        return result


Login = Callable[..., Awaitable[Api]]


@pytest.fixture
def anon(stub: StubHomeserver, session: aiohttp.ClientSession) -> Api:
    assert stub.base_url is not None
    return Api(session, stub.base_url)


@pytest.fixture
def login(stub: StubHomeserver, session: aiohttp.ClientSession) -> Login:
    """``await login("alice", device_id=...)`` registers on first use and logs in over HTTP."""

    async def do_login(name: str, device_id: str | None = None) -> Api:
        if stub.accounts.user_id_for(name) not in stub.accounts.users:
            stub.register(name, "pw")
        assert stub.base_url is not None
        body: dict[str, Any] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": name},
            "password": "pw",
        }
        if device_id:
            body["device_id"] = device_id
        result = await Api(session, stub.base_url).ok("POST", "/login", body)
        return Api(session, stub.base_url, result["access_token"], result["user_id"],
                   result["device_id"])

    return do_login
