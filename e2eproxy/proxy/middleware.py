"""The only place where exceptions become HTTP responses, always as Matrix error JSON."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from e2eproxy.errors import (
    E2EProxyError,
    Forbidden,
    HomeserverFailed,
    InternalError,
    MatrixError,
    StoreLocked,
    TooLarge,
    Unavailable,
    Unrecognized,
    UpstreamError,
)
from e2eproxy.proxy.app_keys import HOST_NAMES, METRICS, SERVER
from e2eproxy.proxy.targets import host_allowed, merged_slashes, target_problem

log = logging.getLogger(__name__)
request_log = logging.getLogger("e2eproxy.requests")


def loggable_path(request: web.Request) -> str:
    """The path, minus a media download's file name: the client took it from a decrypted
    event, so it is the room's plaintext."""
    if "filename" in request.match_info:
        return request.path.rsplit("/", 1)[0] + "/<filename>"
    return request.path


def matrix_error(error: MatrixError) -> web.Response:
    return web.json_response(error.to_json(), status=error.status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except MatrixError as exc:
        return matrix_error(exc)
    except UpstreamError as exc:
        log.warning("%s %s: %s", request.method, loggable_path(request), exc.message)
        return matrix_error(HomeserverFailed(exc.message, status=exc.status))
    except StoreLocked as exc:
        return matrix_error(Unavailable(f"e2eproxy: {exc}"))
    except E2EProxyError as exc:
        log.error("%s %s: %s", request.method, loggable_path(request), exc)
        return matrix_error(InternalError(f"e2eproxy: {exc}"))
    except web.HTTPRequestEntityTooLarge as exc:  # a body over max_json_body
        return matrix_error(TooLarge(f"e2eproxy: {exc.text}"))
    except web.HTTPNotFound:
        return matrix_error(Unrecognized("Unrecognized request", status=404))
    except web.HTTPMethodNotAllowed:
        return matrix_error(Unrecognized("Unrecognized request", status=405))
    except web.HTTPException:
        raise
    except Exception:
        log.exception("Internal error handling %s %s", request.method, loggable_path(request))
        return matrix_error(InternalError("Internal error in e2eproxy"))


@web.middleware
async def target_guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a request target that is not a plain path before anything classifies or forwards
    it: `POST pany://x/_matrix/client/v3/login` is routed as a login, and forwarded as it came
    it would have gone to another host. So are dot segments, and a path that a slash-merging hop
    would route to another handler (`/rooms/!r//send/...` is no send here, but one there)."""
    problem = target_problem(request.raw_path)
    if problem is None and await _routed_elsewhere_when_merged(request):
        problem = "empty path segments that would change which endpoint this is"
    if problem is not None:
        return matrix_error(Unrecognized(f"e2eproxy: {problem}"))
    if not host_allowed(request.headers.get("Host"), request.app[HOST_NAMES]):
        # A web page whose domain was made to resolve to this address (DNS rebinding).
        return matrix_error(
            Forbidden("e2eproxy: this Host is not served here (see allowed_hosts)")
        )
    return await handler(request)


async def _routed_elsewhere_when_merged(request: web.Request) -> bool:
    merged = merged_slashes(request.path)
    if merged == request.path:
        return False
    clone = request.clone(rel_url=URL.build(path=merged, query_string=request.query_string))
    match = await request.app.router.resolve(clone)
    return match.handler is not request.match_info.handler


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: streamed responses are prepared inside the handler, so CORS
    headers are added here, just before headers go out. Only listed origins get them."""
    allowed = request.app[SERVER].cors_origins
    origin = request.headers.get("Origin")
    if not (origin and allowed and ("*" in allowed or origin in allowed)):
        return
    response.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = (
        "X-Requested-With, Content-Type, Authorization, Date"
    )
    if "*" not in allowed:
        response.headers.add("Vary", "Origin")


@web.middleware
async def request_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Each answered request counted in the metrics (the outermost layer sees the status the
    client gets); and one debug line per request, the path only (query strings may carry
    tokens)."""
    if not request_log.isEnabledFor(logging.DEBUG):
        response = await handler(request)
        request.app[METRICS].count_request(request, response.status)
        return response
    started = time.monotonic()
    status = 0
    try:
        response = await handler(request)
        status = response.status
        request.app[METRICS].count_request(request, status)
        return response
    finally:
        elapsed = (time.monotonic() - started) * 1000
        path = loggable_path(request)
        request_log.debug("%s %s -> %s (%.1f ms)", request.method, path, status, elapsed)
