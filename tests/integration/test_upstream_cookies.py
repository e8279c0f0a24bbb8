"""The one HTTP client all accounts share keeps no cookies: what the homeserver sets in an
answer to one user's request never goes out with another user's."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from e2eproxy.proxy.upstream import Upstream


@pytest.fixture
async def homeserver() -> AsyncIterator[str]:
    async def set_cookie(request: web.Request) -> web.Response:
        answer = web.json_response({})
        answer.set_cookie("oidc_session", "alices-sso-session")
        return answer

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"cookie": request.headers.get("Cookie")})

    app = web.Application()
    app.router.add_get("/_matrix/client/v3/set", set_cookie)
    app.router.add_get("/_matrix/client/v3/echo", echo)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    # A host name: a cookie jar takes no cookies from a bare IP address.
    yield str(server.make_url("")).replace("127.0.0.1", "localhost").rstrip("/")
    await server.close()


async def test_a_cookie_set_for_one_user_never_goes_out_with_another(homeserver: str) -> None:
    upstream = Upstream(homeserver, 5.0)
    await upstream.start()
    try:
        assert (await upstream.request_json("GET", "/_matrix/client/v3/set",
                                            access_token="alice"))[0] == 200
        status, body = await upstream.request_json("GET", "/_matrix/client/v3/echo",
                                                   access_token="bob")
        assert (status, body) == (200, {"cookie": None})
    finally:
        await upstream.close()
