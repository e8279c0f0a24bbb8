"""Where an event's content refers to media: only these fields are ever rewritten.

Any other string that happens to equal a media URI (a `body`, a topic, a custom field) is text
the client wrote, and stays as it is: rewriting it would publish the file it names.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class MediaField:
    """One media reference: `url_key` (an mxc URI) in the object at `holder` (a key path from
    the content), or `file_key` there, the same file encrypted (`{"url": ..., "key": ...}`)."""

    holder: tuple[str, ...]
    url_key: str
    file_key: str | None = None


THUMBNAIL = MediaField(("info",), "thumbnail_url", "thumbnail_file")
MESSAGE_FIELDS = (MediaField((), "url", "file"), THUMBNAIL)  # m.image, m.file, m.sticker...
ROOM_AVATAR_FIELDS = (MediaField((), "url"), THUMBNAIL)
AVATAR_URL_FIELDS = (MediaField((), "avatar_url"),)  # m.room.member, a profile's avatar_url
FIELDS_BY_TYPE = {
    "m.room.message": MESSAGE_FIELDS,
    "m.sticker": MESSAGE_FIELDS,
    "m.room.avatar": ROOM_AVATAR_FIELDS,
    "m.room.member": AVATAR_URL_FIELDS,
}


def fields_of(event_type: str) -> tuple[MediaField, ...]:
    """The media fields of an event type; none for types that carry no media."""
    return FIELDS_BY_TYPE.get(event_type, ())


def _is_mxc(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("mxc://")


def _holder(content: Any, path: tuple[str, ...]) -> dict[str, Any] | None:
    for key in path:
        content = content.get(key) if isinstance(content, dict) else None
    return content if isinstance(content, dict) else None


def _uri(holder: dict[str, Any], field: MediaField) -> str | None:
    url = holder.get(field.url_key)
    if _is_mxc(url):
        return str(url)
    file = holder.get(field.file_key) if field.file_key else None
    if isinstance(file, dict) and _is_mxc(file.get("url")):
        return str(file["url"])
    return None


def media_uris(content: Any, fields: tuple[MediaField, ...]) -> list[str]:
    """The mxc URIs the media fields of `content` name, each once, in field order."""
    found: list[str] = []
    for field in fields:
        holder = _holder(content, field.holder)
        uri = _uri(holder, field) if holder is not None else None
        if uri is not None and uri not in found:
            found.append(uri)
    return found


def with_plain_media(
    content: dict[str, Any], fields: tuple[MediaField, ...], replaced: dict[str, str]
) -> dict[str, Any]:
    """A copy of `content` whose media fields that name a URI in `replaced` name its plaintext
    copy as `url_key` instead, without the encrypted `file_key` (its key has no business in a
    plaintext event, and would not decrypt the copy)."""
    result = copy.deepcopy(content)
    for field in fields:
        holder = _holder(result, field.holder)
        uri = _uri(holder, field) if holder is not None else None
        if holder is None or uri is None or uri not in replaced:
            continue
        holder[field.url_key] = replaced[uri]
        if field.file_key:
            holder.pop(field.file_key, None)
    return result
