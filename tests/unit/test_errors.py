"""The error tree: each Matrix error carries its errcode and status, and the middleware is the
one place that turns any of them (and anything unexpected) into Matrix error JSON."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from e2eproxy.errors import (
    BadJson,
    Conflict,
    Errcode,
    Forbidden,
    HomeserverFailed,
    MatrixError,
    NotFound,
    StoreLocked,
    TooLarge,
    Unrecognized,
    UpstreamError,
    homeserver_error,
    token_refused,
)
from e2eproxy.proxy.middleware import errors_middleware


@pytest.mark.parametrize(("error", "status", "errcode"), [
    (Unrecognized("x"), 400, "M_UNRECOGNIZED"),
    (Unrecognized("x", status=415), 415, "M_UNRECOGNIZED"),
    (Forbidden("x"), 403, "M_FORBIDDEN"),
    (BadJson("x"), 400, "M_BAD_JSON"),
    (NotFound("x"), 404, "M_NOT_FOUND"),
    (TooLarge("x"), 413, "M_TOO_LARGE"),
    (Conflict("x"), 409, "M_UNKNOWN"),
    (HomeserverFailed("x"), 502, "M_UNKNOWN"),
])
def test_each_error_knows_its_errcode_and_status(error: MatrixError, status: int,
                                                 errcode: str) -> None:
    assert (error.status, error.errcode, error.to_json()) == (
        status, errcode, {"errcode": errcode, "error": "x"}
    )


def test_the_homeservers_own_error_passes_through_else_502() -> None:
    passed = homeserver_error(429, {"errcode": "M_LIMIT_EXCEEDED", "error": "slow"}, "fallback")
    assert (passed.status, passed.errcode, passed.message) == (429, "M_LIMIT_EXCEEDED", "slow")
    fallback = homeserver_error(500, "<html>", "fallback")
    assert isinstance(fallback, HomeserverFailed) and fallback.message == "fallback"
    assert token_refused(401, {"errcode": Errcode.UNKNOWN_TOKEN})
    assert not token_refused(401, {"errcode": "M_MISSING_TOKEN"})


@pytest.mark.parametrize(("raised", "status", "errcode"), [
    (Forbidden("no"), 403, "M_FORBIDDEN"),
    (UpstreamError(504, "too slow"), 504, "M_UNKNOWN"),
    (StoreLocked("held elsewhere"), 503, "M_UNKNOWN"),
    (RuntimeError("a bug"), 500, "M_UNKNOWN"),
])
async def test_the_middleware_answers_matrix_json(raised: Exception, status: int,
                                                  errcode: str) -> None:
    async def handler(_request: web.Request) -> web.StreamResponse:
        raise raised

    app = web.Application(middlewares=[errors_middleware])
    app.router.add_get("/x", handler)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/x")
        body = await response.json()
    assert response.status == status
    assert body["errcode"] == errcode and isinstance(body["error"], str)
    assert "a bug" not in body["error"]  # an unexpected error's text stays in the log
