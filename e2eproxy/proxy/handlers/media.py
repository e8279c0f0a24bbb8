"""Media up and down: uploads wait here until an event says where they go; downloads of
encrypted media are fetched, checked against their hash, and served decrypted."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from e2eproxy.errors import (
    BadRequest,
    CannotOverwriteMedia,
    Errcode,
    Forbidden,
    HomeserverFailed,
    NotFound,
    Unrecognized,
    UpstreamError,
    homeserver_error,
)
from e2eproxy.protocol.attachments import (
    AttachmentError,
    HashCheck,
    parse_encrypted_file,
)
from e2eproxy.protocol.canonical import parse_json
from e2eproxy.proxy.account import Account
from e2eproxy.proxy.app_keys import MEDIA, REGISTRY, UPSTREAM
from e2eproxy.proxy.handlers.common import (
    refuse,
    refuse_encoded_body,
    require_token,
    token_info,
)
from e2eproxy.proxy.handlers.passthrough import passthrough
from e2eproxy.proxy.handlers.upload_limits import check_size, upload_limit, within
from e2eproxy.proxy.media import CHUNK, KnownMedia, PendingUpload, _b64
from e2eproxy.proxy.outgoing import MAX_RETRY_DELAY_S, call, jittered, retry_wait
from e2eproxy.proxy.registry import token_of

UPLOAD_ATTEMPTS = 3
COPY_WAIT_MS = 1_000
INLINE_TYPES = ("image/", "video/", "audio/", "text/plain")
# As the homeserver does for media: nothing served here may run as a page.
MEDIA_CSP = (
    "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "
    "style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"
)


async def _reserve(request: web.Request, account: Account) -> tuple[str, bool]:
    """A media id from the server (asynchronous upload), or one of ours when it has none."""
    status, body = await call(
        request.app[UPSTREAM], account, "POST", "/_matrix/media/v1/create", {}
    )
    if status == 200 and isinstance(body, dict) and isinstance(body.get("content_uri"), str):
        return body["content_uri"], False
    unsupported = status in (404, 405) or (
        isinstance(body, dict) and body.get("errcode") == Errcode.UNRECOGNIZED
    )
    if not unsupported:
        raise homeserver_error(status, body, "The homeserver refused to reserve a media id")
    server_name = account.user_id.split(":", 1)[1]
    return f"mxc://{server_name}/e2eproxy_{secrets.token_hex(12)}", True


async def _uploader(request: web.Request) -> Account:
    """The account an upload is held for. Without one it is refused, never passed on: the file
    would be on the server in plaintext before any event says which room it is for."""
    info = await request.app[REGISTRY].resolve(require_token(request))
    if info.account is None:
        raise refuse(info)
    refuse_encoded_body(request)
    return info.account


async def upload(request: web.Request) -> web.StreamResponse:
    account = await _uploader(request)
    limit = await check_size(request, account)
    mxc = await _hold(request, account, None, limit)
    return web.json_response({"content_uri": mxc})


async def unknown_upload(request: web.Request) -> web.StreamResponse:
    raise Unrecognized(
        "e2eproxy does not forward this form of upload (the file could reach the server in "
        "plaintext); use POST /_matrix/media/v3/upload",
    )


async def no_preview(request: web.Request) -> web.StreamResponse:
    raise Forbidden(
        "e2eproxy does not ask the server for URL previews: the links may come from encrypted "
        "rooms",
    )


async def upload_to(request: web.Request) -> web.StreamResponse:
    """PUT /upload/{server}/{media_id}: the client's own asynchronous upload, into an id it
    reserved with /create. Held like any upload: the server gets it, encrypted or not, once an
    event says where it goes."""
    account = await _uploader(request)
    mxc = f"mxc://{request.match_info['server']}/{request.match_info['media_id']}"
    media = request.app[MEDIA].of(account)
    if await media.get_pending(mxc) is not None or await media.known(mxc) is not None:
        raise CannotOverwriteMedia("Media ID already has content")
    limit = await check_size(request, account)
    await _hold(request, account, mxc, limit)
    return web.json_response({})


async def _hold(request: web.Request, account: Account, mxc: str | None, limit: int) -> str:
    """Spool the request's body and remember it as a pending upload under `mxc`, or under a
    media id reserved now (after the body arrived whole and within the limit)."""
    service = request.app[MEDIA]
    stream = within(request.content.iter_chunked(CHUNK), limit)
    name, key, size = await service.spool.write(stream)
    placeholder = False
    if mxc is None:
        try:
            mxc, placeholder = await _reserve(request, account)
        except BaseException:
            await service.spool.discard(name)
            raise
    pending = PendingUpload(
        mxc=mxc,
        spool_name=name,
        key=_b64(key.key),
        iv=_b64(key.iv),
        sha256=_b64(key.sha256),
        content_type=request.headers.get("Content-Type", "application/octet-stream"),
        filename=request.query.get("filename"),
        size=size,
        expires_ms=int((time.time() + service.upload_ttl_s) * 1000),
        placeholder=placeholder,
    )
    await service.of(account).add_pending(pending)
    return mxc


async def publish(
    request: web.Request, account: Account, pending: PendingUpload, encrypted: bool
) -> str:
    """Send a held upload to the server, as ciphertext or plaintext; returns its final mxc."""
    service = request.app[MEDIA]
    media_id = pending.mxc.removeprefix("mxc://")
    if pending.placeholder:
        query = f"?filename={quote(pending.filename)}" if pending.filename and not encrypted else ""
        method, path = "POST", f"/_matrix/media/v3/upload{query}"
    else:
        method, path = "PUT", f"/_matrix/media/v3/upload/{media_id}"
    headers = {
        "Authorization": f"Bearer {account.access_token}",
        "Content-Type": "application/octet-stream" if encrypted else pending.content_type,
        "Content-Length": str(pending.size),
    }
    backoff = 0.5
    for attempt in range(UPLOAD_ATTEMPTS):
        last = attempt == UPLOAD_ATTEMPTS - 1
        body = service.spool.read(pending.spool_name, None if encrypted else pending.file_key)
        try:
            async with request.app[UPSTREAM].open(method, path, headers, body) as response:
                status = response.status
                data = _json(await response.read())
        except UpstreamError:
            if last:
                raise
            await account.timer.sleep(jittered(backoff))
            backoff = min(backoff * 2, MAX_RETRY_DELAY_S)
            continue
        if status == 200:
            uri = data.get("content_uri") if isinstance(data, dict) else None
            return uri if pending.placeholder and isinstance(uri, str) else pending.mxc
        if _already_there(pending, status, data):
            # Only this user can write into the id it reserved, and we only ever write these
            # bytes there: an earlier try (this send's, or a failed send's) got them in, and
            # its answer was lost on the way back.
            return pending.mxc
        if (status < 500 and status != 429) or last:
            break
        await account.timer.sleep(retry_wait(status, data, backoff))
        backoff = min(backoff * 2, MAX_RETRY_DELAY_S)
    raise homeserver_error(status, data, "The homeserver refused the file; nothing was sent")


def _already_there(pending: PendingUpload, status: int, data: Any) -> bool:
    return (
        not pending.placeholder and status == 409 and isinstance(data, dict)
        and data.get("errcode") == Errcode.CANNOT_OVERWRITE_MEDIA
    )


async def download(request: web.Request) -> web.StreamResponse:
    info = await token_info(request)
    if info is None or info.account is None:
        return await passthrough(request)
    account = info.account
    media = request.app[MEDIA].of(account)
    mxc = f"mxc://{request.match_info['server']}/{request.match_info['media_id']}"
    pending = await media.get_pending(mxc)
    if pending is not None:
        # Served from here, with no request the server could refuse: a token cached here may
        # have been logged out elsewhere since, so the server is asked first.
        await request.app[REGISTRY].revalidate(require_token(request))
        source = request.app[MEDIA].spool.read(pending.spool_name, pending.file_key)
        return await _serve(
            request,
            source,
            pending.size,
            pending.content_type,
            request.match_info.get("filename") or pending.filename,
        )
    known = await media.known(mxc)
    if known is None:
        return await passthrough(request)
    # /_matrix/client/v1/media/thumbnail/... or /_matrix/media/v3/thumbnail/...
    if "thumbnail" in request.path.split("/")[4:6] and known.thumbnail:
        known = await media.known(known.thumbnail) or known
    if request.method == "HEAD":
        return await _head_encrypted(request, known)
    return await _serve_encrypted(request, known)


async def _serve_encrypted(request: web.Request, known: KnownMedia) -> web.StreamResponse:
    try:
        url, key = parse_encrypted_file(known.file)
    except AttachmentError as exc:
        raise HomeserverFailed(f"Cannot decrypt this file: {exc}") from exc
    spool = request.app[MEDIA].spool
    name = spool.new_name()
    check = HashCheck(key)
    try:  # the spool file goes in every case, a download that failed half-way included
        size = await _fetch_ciphertext(request, url, name, check.update)
        if not check.ok():
            raise HomeserverFailed(
                "The file failed its integrity check (sha256); it was not served"
            )
        filename = request.match_info.get("filename") or known.filename
        source = spool.read(name, key, unlink=True)
        return await _serve(
            request, source, size, known.mimetype or "application/octet-stream", filename
        )
    finally:
        await spool.discard(name)


async def _head_encrypted(request: web.Request, known: KnownMedia) -> web.StreamResponse:
    """HEAD of an encrypted file: the headers a GET would have, from the server's answer
    alone (AES-CTR keeps the length), its body never read. A file that fails its hash check
    only shows on GET."""
    try:
        url, _key = parse_encrypted_file(known.file)
    except AttachmentError as exc:
        raise HomeserverFailed(f"Cannot decrypt this file: {exc}") from exc
    async with _download(request, url) as response:
        size = response.content_length
    filename = request.match_info.get("filename") or known.filename
    return await _serve(request, None, size, known.mimetype or "application/octet-stream",
                        filename)


async def copy_plain(request: web.Request, account: Account, known: KnownMedia) -> str:
    """A plaintext copy, under a new id, of an encrypted file this account knows: for an
    unencrypted room, an avatar or a state event, which every reader must be able to open."""
    try:
        url, key = parse_encrypted_file(known.file)
    except AttachmentError as exc:
        raise BadRequest(f"Cannot decrypt this file: {exc}") from exc
    service = request.app[MEDIA]
    name = service.spool.new_name()
    check = HashCheck(key)
    try:
        size = await _fetch_ciphertext(request, url, name, check.update)
        if not check.ok():
            raise HomeserverFailed(
                "The file failed its integrity check (sha256); nothing was sent"
            )
        # The spool copy is the ciphertext and the event's key decrypts it: published in
        # plaintext like any held upload, to a new id from a plain upload.
        copy = PendingUpload(
            mxc=url, spool_name=name, key=_b64(key.key), iv=_b64(key.iv), sha256=_b64(key.sha256),
            content_type=known.mimetype or "application/octet-stream", filename=known.filename,
            size=size, expires_ms=0, placeholder=True,
        )
        return await publish(request, account, copy, encrypted=False)
    finally:
        await service.spool.discard(name)


@contextlib.asynccontextmanager
async def _download(
    request: web.Request, mxc: str, wait_ms: int | None = None
) -> AsyncIterator[aiohttp.ClientResponse]:
    """The server's answer for `mxc` (status 200, body unread), as the requesting user:
    authenticated media first, the legacy API on a server without it. `wait_ms` bounds the
    wait for content not uploaded yet (the server's default is 20 s)."""
    media_id = mxc.removeprefix("mxc://")
    if wait_ms is not None:
        media_id += f"?timeout_ms={wait_ms}"
    headers = {"Authorization": f"Bearer {token_of(request) or ''}"}
    upstream = request.app[UPSTREAM]
    for path in (
        f"/_matrix/client/v1/media/download/{media_id}",
        f"/_matrix/media/v3/download/{media_id}",
    ):
        async with upstream.open("GET", path, headers) as response:
            if response.status == 404 and path.startswith("/_matrix/client/v1"):
                body = await response.read()
                if Errcode.UNRECOGNIZED.encode() in body:
                    continue  # no authenticated media on this server: try the legacy API
                raise homeserver_error(404, _json(body), "The file is not on the server")
            if response.status != 200:
                raise homeserver_error(
                    response.status,
                    _json(await response.read()),
                    "The homeserver could not serve the file",
                )
            try:
                yield response
            except aiohttp.ClientError as exc:
                raise UpstreamError(502, "The homeserver broke off the file download") from exc
            except TimeoutError as exc:
                raise UpstreamError(504, "The homeserver stalled during the file download") from exc
            return
    raise NotFound("The file is not on the server")


async def _fetch_ciphertext(
    request: web.Request, url: str, name: str, on_chunk: Callable[[bytes], None]
) -> int:
    """Download the ciphertext to the new spool file `name`, hashing it on the way."""

    async def hashed(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            on_chunk(chunk)
            yield chunk

    async with _download(request, url) as response:
        return await request.app[MEDIA].spool.store(
            name, hashed(response.content.iter_chunked(CHUNK))
        )


async def copy_encrypted(request: web.Request, account: Account, mxc: str) -> KnownMedia:
    """An encrypted copy of a file the server has in plaintext (uploaded elsewhere, or from an
    unencrypted room), for an encrypted room: the event then names only the copy, so the server
    cannot tell which file the encrypted message carries."""
    service = request.app[MEDIA]
    limit = await upload_limit(request, account)
    # A reserved id with no content yet (an upload that expired here, say) is not waited for.
    async with _download(request, mxc, wait_ms=COPY_WAIT_MS) as response:
        content_type = response.headers.get("Content-Type", "application/octet-stream")
        stream = within(response.content.iter_chunked(CHUNK), limit)
        name, key, size = await service.spool.write(stream)
    try:
        reserved, placeholder = await _reserve(request, account)
        copy = PendingUpload(
            mxc=reserved, spool_name=name, key=_b64(key.key), iv=_b64(key.iv),
            sha256=_b64(key.sha256), content_type=content_type, filename=None, size=size,
            expires_ms=int((time.time() + service.upload_ttl_s) * 1000), placeholder=placeholder,
        )
        final = await publish(request, account, copy, encrypted=True)
    finally:
        await service.spool.discard(name)
    return KnownMedia(copy.file_key.to_json(final), content_type.split(";")[0].strip())


def _json(body: bytes) -> Any:
    with contextlib.suppress(ValueError):
        return parse_json(body)
    return None


async def _serve(
    request: web.Request,
    source: AsyncIterator[bytes] | None,
    size: int | None,
    content_type: str,
    filename: str | None,
) -> web.StreamResponse:
    response = web.StreamResponse(status=200)
    response.content_type = content_type
    response.content_length = size
    disposition = "inline" if content_type.startswith(INLINE_TYPES) else "attachment"
    if filename:
        disposition += f"; filename*=utf-8''{quote(filename, safe='')}"
    response.headers["Content-Disposition"] = disposition
    response.headers["Content-Security-Policy"] = MEDIA_CSP
    response.headers["Cache-Control"] = "private, max-age=0"
    await response.prepare(request)
    if source is not None and request.method != "HEAD":  # aiohttp would put a body on HEAD
        async for chunk in source:
            await response.write(chunk)
    await response.write_eof()
    return response
