"""Media repository: plain and asynchronous (create, then upload) uploads."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

from .accounts import now_ms
from .errors import MatrixError, forbidden, not_found

UNUSED_MEDIA_LIFETIME_MS = 24 * 3600 * 1000


@dataclass
class Media:
    server_name: str
    media_id: str
    creator: str
    created_ts: int = field(default_factory=now_ms)
    content: bytes | None = None
    content_type: str = "application/octet-stream"
    filename: str | None = None
    uploaded: asyncio.Event = field(default_factory=asyncio.Event)
    # Set by a test: a download sends its headers and first byte, then waits for this before
    # the rest (a client that only wanted the headers is seen not to wait for the body).
    body_gate: asyncio.Event | None = None

    @property
    def mxc(self) -> str:
        return f"mxc://{self.server_name}/{self.media_id}"


class MediaStore:
    def __init__(self, server_name: str, max_upload_size: int) -> None:
        self.server_name = server_name
        self.max_upload_size = max_upload_size
        self.items: dict[tuple[str, str], Media] = {}

    def create(self, creator: str) -> Media:
        media = Media(self.server_name, secrets.token_urlsafe(18), creator)
        self.items[(media.server_name, media.media_id)] = media
        return media

    def get(self, server_name: str, media_id: str) -> Media:
        media = self.items.get((server_name, media_id))
        if media is None:
            raise not_found("Not found")
        return media

    def fill(
        self, media: Media, uploader: str, content: bytes, content_type: str | None,
        filename: str | None,
    ) -> None:
        self.check_uploadable(media, uploader)
        media.content = content
        media.content_type = content_type or "application/octet-stream"
        media.filename = filename
        media.uploaded.set()

    @staticmethod
    def check_uploadable(media: Media, uploader: str) -> None:
        if media.creator != uploader:
            raise forbidden("You may not upload to this media ID")
        if media.content is not None:
            raise MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "Media ID already has content")

    def unused_expires_at(self, media: Media) -> int:
        return media.created_ts + UNUSED_MEDIA_LIFETIME_MS
