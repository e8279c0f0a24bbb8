"""The aiohttp application: middlewares (record, faults, Matrix errors), routes, runner."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from . import account_data, auth, keys, media, room_keys, room_reads, rooms, sync, to_device
from .common import FORM_TOKEN, STUB_KEY, Handler, stub_of
from .errors import UNRECOGNIZED, MatrixError, error_response
from .server import RecordedRequest, StubHomeserver

log = logging.getLogger(__name__)
MEDIA_PATHS = ("/_matrix/media/", "/_matrix/client/v1/media/")
MAX_JSON_BODY = 100 * 1024 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"


@web.middleware
async def record_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    body: Any = None
    if request.can_read_body and not request.path.startswith(MEDIA_PATHS):
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
    stub_of(request).requests.append(RecordedRequest(
        method=request.method, path=request.path, raw_path=request.raw_path,
        query=dict(request.query), headers=dict(request.headers), json=body,
    ))
    return await handler(request)


@web.middleware
async def form_arguments(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Twisted parses a form-encoded POST body into the request args, where Synapse finds an
    `access_token` (a body can be JSON and a form at once)."""
    if request.method == "POST" and request.content_type == FORM_TYPE:
        form = parse_qs((await request.read()).decode("latin-1"))
        if form.get("access_token"):
            request[FORM_TOKEN] = form["access_token"][0]
    return await handler(request)


@web.middleware
async def inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    stub = stub_of(request)
    fault = stub.faults.take(request.method, request.path, request.query_string)
    if fault is None:
        return await handler(request)
    if fault.delay and not await stub.stream.sleep(fault.delay):
        # Shutting down: a held request ends now (as a long-poll does), so the stub stops
        # without waiting out its shutdown timeout.
        return error_response(503, "M_UNKNOWN", "The server is shutting down")
    if fault.drop:
        if request.transport is not None:
            request.transport.close()
        raise asyncio.CancelledError()
    if fault.raw is not None:
        return web.Response(body=fault.raw, status=fault.status or 200,
                            content_type="application/json")
    if fault.status is None:
        response = await handler(request)
        if fault.late:
            await stub.stream.sleep(fault.late)
        return response
    body = fault.error_body()
    headers = {}
    if fault.status == 429 and "retry_after_ms" in body:
        headers["Retry-After"] = str(max(1, -(-int(body["retry_after_ms"]) // 1000)))
    return web.json_response(body, status=fault.status, headers=headers)


@web.middleware
async def matrix_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "OPTIONS":  # CORS preflight: like Synapse, an empty 204 anywhere
        return web.Response(status=204)
    try:
        return await handler(request)
    except MatrixError as exc:
        return exc.response()
    except web.HTTPNotFound:
        return UNRECOGNIZED.response()
    except web.HTTPMethodNotAllowed:
        return error_response(405, UNRECOGNIZED.errcode, UNRECOGNIZED.error)
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "M_TOO_LARGE", "Request body too large")
    except web.HTTPException as exc:
        return error_response(exc.status, "M_UNKNOWN", exc.reason)
    except ConnectionResetError:
        raise  # the client went away mid-body (it timed out): nothing wrong with the stub
    except Exception as exc:
        log.exception("stub homeserver: unhandled error in %s %s", request.method, request.path)
        stub_of(request).internal_errors.append(exc)
        return error_response(500, "M_UNKNOWN", f"Internal server error: {exc!r}")


def create_stub_app(stub: StubHomeserver | None = None) -> web.Application:
    """Build the stub homeserver app; the state is ``app[STUB_KEY]``."""
    app = web.Application(
        middlewares=[record_request, form_arguments, inject_faults, matrix_errors],
        client_max_size=MAX_JSON_BODY,
    )
    app[STUB_KEY] = stub or StubHomeserver()
    for module in (auth, sync, rooms, room_reads, keys, to_device, media, account_data,
                   room_keys):
        app.router.add_routes(module.routes())

    async def release_waiters(app: web.Application) -> None:
        app[STUB_KEY].close()

    app.on_shutdown.append(release_waiters)
    return app


@asynccontextmanager
async def running_stub(
    stub: StubHomeserver | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[StubHomeserver]:
    """Serve a stub on ``host`` and an ephemeral port; ``stub.base_url`` is its URL."""
    app = create_stub_app(stub)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, 0)
        await site.start()
        bound_host, port = runner.addresses[0][:2]
        served = app[STUB_KEY]
        served.base_url = f"http://{bound_host}:{port}"
        yield served
    finally:
        await runner.cleanup()
