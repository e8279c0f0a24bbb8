"""Events that refer to uploads: before an event leaves, the files it names go up, encrypted
for an encrypted room and plain for anything else, and the event is rewritten to match."""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from e2eproxy.errors import MatrixError
from e2eproxy.proxy.account import Account
from e2eproxy.proxy.handlers.media import publish
from e2eproxy.proxy.keys import MEDIA
from e2eproxy.proxy.media import KnownMedia

PLAINTEXT_FILE = (
    "This file is on the server unencrypted (it was not uploaded through e2eproxy, or it was "
    "already used outside an encrypted room), so it cannot go into an encrypted room. Upload it "
    "again through e2eproxy. Nothing was sent."
)


def _is_mxc(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("mxc://")


async def _encrypted_file(
    request: web.Request, account: Account, mxc: Any, mimetype: Any
) -> dict[str, Any]:
    """The EncryptedFile for `mxc`: publish a held upload encrypted, or reuse a known key."""
    media = request.app[MEDIA].of(account)
    pending = await media.get_pending(mxc)
    if pending is not None:
        final = await publish(request, account, pending, encrypted=True)
        file = pending.file_key.to_json(final)
        known = KnownMedia(
            file, mimetype if isinstance(mimetype, str) else pending.content_type, pending.filename
        )
        await media.add_known(final, known)
        if final != mxc:
            await media.add_known(mxc, known)
        await media.drop_pending(mxc)
        return file
    known_media = await media.known(mxc)
    if known_media is not None:
        return dict(known_media.file)
    raise MatrixError(400, "M_FORBIDDEN", PLAINTEXT_FILE)


async def encrypt_references(
    request: web.Request, account: Account, content: dict[str, Any]
) -> dict[str, Any]:
    """Content for an encrypted room: `url` -> `file`, `info.thumbnail_url` ->
    `info.thumbnail_file`, the files uploaded encrypted first."""
    url = content.get("url")
    info = content.get("info")
    thumb = info.get("thumbnail_url") if isinstance(info, dict) else None
    if not _is_mxc(url) and not _is_mxc(thumb):
        return content
    content = copy.deepcopy(content)
    info = content.get("info") if isinstance(content.get("info"), dict) else None
    thumb_file = None
    if info is not None and _is_mxc(thumb):
        thumb_info = info.get("thumbnail_info")
        mimetype = thumb_info.get("mimetype") if isinstance(thumb_info, dict) else None
        thumb_file = await _encrypted_file(request, account, thumb, mimetype)
        info["thumbnail_file"] = thumb_file
        del info["thumbnail_url"]
    if _is_mxc(url):
        mimetype = info.get("mimetype") if info is not None else None
        file = await _encrypted_file(request, account, url, mimetype)
        content["file"] = file
        del content["url"]
        if thumb_file is not None:
            media = request.app[MEDIA].of(account)
            known = await media.known(file["url"])
            if known is not None:
                known.thumbnail = thumb_file["url"]
                await media.add_known(file["url"], KnownMedia(**vars(known)))
    return content


async def publish_plain_references(request: web.Request, account: Account, data: Any) -> Any:
    """Anything that is not an encrypted room event (plain rooms, state, avatars): held uploads
    it names go up in plaintext, once, so the server's thumbnails work for them."""
    media = request.app[MEDIA].of(account)
    pending = await media.pending()
    if not pending:
        return data
    found = {s for s in _strings(data) if s in pending}
    if not found:
        return data
    replaced: dict[str, str] = {}
    for mxc in found:
        final = await publish(request, account, pending[mxc], encrypted=False)
        await media.drop_pending(mxc)
        if final != mxc:
            replaced[mxc] = final
    return _substitute(data, replaced) if replaced else data


def _strings(data: Any) -> list[str]:
    if isinstance(data, str):
        return [data] if data.startswith("mxc://") else []
    if isinstance(data, dict):
        return [s for value in data.values() for s in _strings(value)]
    if isinstance(data, list):
        return [s for value in data for s in _strings(value)]
    return []


def _substitute(data: Any, replaced: dict[str, str]) -> Any:
    if isinstance(data, str):
        return replaced.get(data, data)
    if isinstance(data, dict):
        return {k: _substitute(v, replaced) for k, v in data.items()}
    if isinstance(data, list):
        return [_substitute(v, replaced) for v in data]
    return data
