"""Media repository endpoints: plain and asynchronous uploads, downloads, thumbnails."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import quote

from aiohttp import web

from .common import int_param, ok, session_of, stub_of
from .errors import MatrixError
from .mediastore import Media

INLINE_PREFIXES = ("image/", "video/", "audio/", "text/plain")
MAX_WAIT_MS = 60_000


async def _read_upload(request: web.Request) -> bytes:
    """Read the body in chunks, refusing it as soon as it exceeds the size limit."""
    limit = stub_of(request).media.max_upload_size
    if request.content_length is not None and request.content_length > limit:
        raise MatrixError(413, "M_TOO_LARGE", "Upload request body is too large")
    data = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        data += chunk
        if len(data) > limit:
            raise MatrixError(413, "M_TOO_LARGE", "Upload request body is too large")
    return bytes(data)


def _content_type(request: web.Request) -> str | None:
    return request.headers.get("Content-Type")


async def upload(request: web.Request) -> web.Response:
    session = session_of(request)
    stub = stub_of(request)
    content = await _read_upload(request)
    media = stub.media.create(session.user_id)
    stub.media.fill(media, session.user_id, content, _content_type(request),
                    request.query.get("filename"))
    return ok({"content_uri": media.mxc})


async def create(request: web.Request) -> web.Response:
    session = session_of(request)
    stub = stub_of(request)
    media = stub.media.create(session.user_id)
    return ok({"content_uri": media.mxc,
               "unused_expires_at": stub.media.unused_expires_at(media)})


async def upload_to(request: web.Request) -> web.Response:
    session = session_of(request)
    stub = stub_of(request)
    media = stub.media.get(request.match_info["server_name"], request.match_info["media_id"])
    # Refuse before reading the body; fill() checks again in case of a concurrent upload.
    stub.media.check_uploadable(media, session.user_id)
    content = await _read_upload(request)
    stub.media.fill(media, session.user_id, content, _content_type(request),
                    request.query.get("filename"))
    return ok()


def _disposition(media: Media, filename: str | None) -> str:
    kind = "inline" if media.content_type.startswith(INLINE_PREFIXES) else "attachment"
    name = filename or media.filename
    if not name:
        return kind
    if name.isascii() and name.isprintable() and not any(c in name for c in '"\\;'):
        return f'{kind}; filename="{name}"'
    return f"{kind}; filename*=utf-8''{quote(name, safe='')}"


async def _serve(request: web.Request, authenticated: bool) -> web.StreamResponse:
    if authenticated:
        session_of(request)
    stub = stub_of(request)
    media = stub.media.get(request.match_info["server_name"], request.match_info["media_id"])
    if media.content is None:
        wait_ms = min(max(int_param(request, "timeout_ms", 20_000), 0), MAX_WAIT_MS)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(media.uploaded.wait(), wait_ms / 1000)
    if media.content is None:
        raise MatrixError(504, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded")
    headers = {
        "Content-Type": media.content_type,
        "Content-Disposition": _disposition(media, request.match_info.get("filename")),
        "Cross-Origin-Resource-Policy": "cross-origin",
        "Content-Security-Policy": "sandbox; default-src 'none'; script-src 'none'; "
                                   "plugin-types application/pdf; style-src 'unsafe-inline'; "
                                   "media-src 'self'; object-src 'self';",
    }
    if media.body_gate is None:
        return web.Response(body=media.content, headers=headers)
    response = web.StreamResponse(headers=headers)
    response.content_length = len(media.content)
    await response.prepare(request)
    await response.write(media.content[:1])
    await media.body_gate.wait()
    with contextlib.suppress(ConnectionResetError):  # the client took the headers and left
        await response.write(media.content[1:])
        await response.write_eof()
    return response


async def download_legacy(request: web.Request) -> web.StreamResponse:
    return await _serve(request, authenticated=False)


async def download_authenticated(request: web.Request) -> web.StreamResponse:
    return await _serve(request, authenticated=True)


async def config(request: web.Request) -> web.Response:
    if request.path.startswith("/_matrix/client/"):
        session_of(request)
    return ok({"m.upload.size": stub_of(request).media.max_upload_size})


def routes() -> list[web.RouteDef]:
    table: list[web.RouteDef] = [
        web.post("/_matrix/media/v1/create", create),
        web.get("/_matrix/client/v1/media/config", config),
    ]
    item = "/{server_name}/{media_id}"
    for kind in ("download", "thumbnail"):
        table += [
            web.get(f"/_matrix/client/v1/media/{kind}{item}", download_authenticated),
            web.get(f"/_matrix/client/v1/media/{kind}{item}/{{filename}}",
                    download_authenticated),
        ]
    for version in ("v3", "r0"):
        prefix = f"/_matrix/media/{version}"
        table += [
            web.post(f"{prefix}/upload", upload),
            web.put(f"{prefix}/upload{item}", upload_to),
            web.get(f"{prefix}/config", config),
        ]
        for kind in ("download", "thumbnail"):
            table += [
                web.get(f"{prefix}/{kind}{item}", download_legacy),
                web.get(f"{prefix}/{kind}{item}/{{filename}}", download_legacy),
            ]
    return table
