"""Events that refer to uploads: before an event leaves, the files it names go up, encrypted
for an encrypted room and plain for anything else, and the event is rewritten to match."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from e2eproxy.errors import Forbidden, NotFound
from e2eproxy.protocol.media_fields import MediaField, fields_of, media_uris, with_plain_media
from e2eproxy.proxy.account import Account
from e2eproxy.proxy.app_keys import CONFIG, MEDIA
from e2eproxy.proxy.handlers.media import copy_encrypted, copy_plain, publish
from e2eproxy.proxy.media import KnownMedia, PendingUpload

DECRYPTED_FILE = (
    "This file came from an encrypted room: e2eproxy publishes a plaintext copy of it only into "
    "a room known to be unencrypted, never into a state event of an encrypted room, a new "
    "room or a profile. Nothing was sent."
)
# Asked before a decrypted file is published in plaintext: is the target room unencrypted?
PlainRoom = Callable[[], Awaitable[bool]]
PLAINTEXT_FILE = (
    "This file is on the server unencrypted (it was not uploaded through e2eproxy, or it was "
    "already used outside an encrypted room), so it cannot go into an encrypted room. Upload it "
    "again through e2eproxy (or set encryption.plaintext_files = \"copy\"). Nothing was sent."
)


HELD_ELSEWHERE = (
    "This file was uploaded through another e2eproxy instance, which holds it until a message "
    "names it (or its held copy is gone). Send the message through the same instance, or upload "
    "the file again. Nothing was sent."
)


async def _held_upload(request: web.Request, account: Account, mxc: str) -> PendingUpload | None:
    """The held upload behind `mxc`, if any; NotFound when its bytes are not in this instance's
    spool (the store, shared by several instances, names uploads that another one holds)."""
    pending = await request.app[MEDIA].of(account).get_pending(mxc)
    if pending is not None and not await request.app[MEDIA].spool.holds(pending.spool_name):
        raise NotFound(HELD_ELSEWHERE)
    return pending


def _is_mxc(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("mxc://")


async def _encrypted_file(
    request: web.Request, account: Account, mxc: str, mimetype: str | None
) -> KnownMedia:
    """The encrypted file behind `mxc`: a held upload, published encrypted now, one whose key
    we already know, or (with `plaintext_files = "copy"`) an encrypted copy of a file the
    server has in plaintext; otherwise such a file is refused."""
    media = request.app[MEDIA].of(account)
    pending = await _held_upload(request, account, mxc)
    if pending is not None:
        final = await publish(request, account, pending, encrypted=True)
        known = KnownMedia(
            pending.file_key.to_json(final), mimetype or pending.content_type, pending.filename
        )
        await media.add_known(final, known)
        if final != mxc:
            await media.add_known(mxc, known)
        await media.drop_pending(mxc)
        return known
    known_media = await media.known(mxc)
    if known_media is not None:
        return known_media
    # On the server in plaintext already (uploaded elsewhere, or shared in an unencrypted
    # room): refused, or (if configured) an encrypted copy, never a link to the plaintext.
    if request.app[CONFIG].encryption.plaintext_files != "copy":
        raise Forbidden(PLAINTEXT_FILE, status=400)
    copy = await copy_encrypted(request, account, mxc)
    if mimetype:
        copy.mimetype = mimetype
    await media.add_known(copy.file["url"], copy)
    return copy


def _mimetype(holder: Any) -> str | None:
    value = holder.get("mimetype") if isinstance(holder, dict) else None
    return value if isinstance(value, str) else None


async def encrypt_references(
    request: web.Request, account: Account, content: dict[str, Any]
) -> dict[str, Any]:
    """Content for an encrypted room: `url` -> `file`, `info.thumbnail_url` ->
    `info.thumbnail_file`, the files uploaded encrypted first. The upload's content type fills a
    missing `mimetype`, so recipients still know what the file is."""
    url = content.get("url")
    thumb = content["info"].get("thumbnail_url") if isinstance(content.get("info"), dict) else None
    if not _is_mxc(url) and not _is_mxc(thumb):
        return content
    content = copy.deepcopy(content)
    info = content.setdefault("info", {}) if _is_mxc(url) else content["info"]
    thumbnail = None
    if _is_mxc(thumb):
        thumb_info = info.setdefault("thumbnail_info", {})
        thumbnail = await _encrypted_file(request, account, str(thumb), _mimetype(thumb_info))
        info["thumbnail_file"] = dict(thumbnail.file)
        del info["thumbnail_url"]
        if thumbnail.mimetype and isinstance(thumb_info, dict):
            thumb_info.setdefault("mimetype", thumbnail.mimetype)
    if _is_mxc(url):
        main = await _encrypted_file(request, account, str(url), _mimetype(info))
        content["file"] = dict(main.file)
        del content["url"]
        if main.mimetype:
            info.setdefault("mimetype", main.mimetype)
        if thumbnail is not None:
            media = request.app[MEDIA].of(account)
            await media.add_known(main.file["url"], replace(main, thumbnail=thumbnail.file["url"]))
    return content


async def publish_plain_references(
    request: web.Request,
    account: Account,
    content: Any,
    fields: tuple[MediaField, ...],
    plain_room: PlainRoom | None,
) -> Any:
    """Content for anything but an encrypted room event (a plain room, state, an avatar): the
    held uploads its media `fields` name go up in plaintext, once, so the server's thumbnails
    work for them; an encrypted file this account decrypted goes up as a plaintext copy, but
    only into a room that `plain_room` says is unencrypted (never with None), since its bytes
    came from an encrypted room. Only those fields are rewritten."""
    media = request.app[MEDIA].of(account)
    replaced: dict[str, str] = {}
    for mxc in media_uris(content, fields):
        pending = await _held_upload(request, account, mxc)
        if pending is not None:
            final = await publish(request, account, pending, encrypted=False)
            await media.drop_pending(mxc)
        else:
            known = await media.known(mxc)
            if known is None:
                continue  # on the server in plaintext already, or not ours to change
            if plain_room is None or not await plain_room():
                raise Forbidden(DECRYPTED_FILE)
            final = await copy_plain(request, account, known)
        if final != mxc:
            replaced[mxc] = final
    return with_plain_media(content, fields, replaced) if replaced else content


async def publish_initial_state(
    request: web.Request, account: Account, spec: dict[str, Any]
) -> dict[str, Any]:
    """A createRoom body whose initial state names held uploads (an avatar): they go up in
    plaintext. A decrypted file is refused: whether the new room ends up encrypted is the
    server's to decide (its defaults may encrypt every new room)."""
    states = spec.get("initial_state")
    if not isinstance(states, list):
        return spec
    published = []
    for state in states:
        content = state.get("content") if isinstance(state, dict) else None
        if isinstance(content, dict) and isinstance(state.get("type"), str):
            fields = fields_of(state["type"])
            plain = await publish_plain_references(request, account, content, fields, None)
            state = state if plain is content else {**state, "content": plain}
        published.append(state)
    if all(new is old for new, old in zip(published, states, strict=True)):
        return spec
    return {**spec, "initial_state": published}
