"""Media of one account: uploads held back until we know where they go, and the keys of the
encrypted files its events refer to.

An upload is reserved on the server (`/_matrix/media/v1/create`) but its bytes stay here,
encrypted on arrival with a fresh attachment key (the spool file is ciphertext; its key lives only
in the encrypted store). When an event refers to it, the bytes go up encrypted (encrypted room) or
decrypted (anything else), so nothing reaches the server before we know which it must be.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from e2eproxy.protocol.attachments import Decryptor, Encryptor, FileKey
from e2eproxy.proxy.account import Account

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
PENDING_SECRET = "pending_uploads"
KNOWN_PREFIX = "media:"
KNOWN_CACHE = 2_000
EXPIRY_CHECK_S = 300.0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class PendingUpload:
    """An upload the client made that has not gone to the server yet."""

    mxc: str
    spool_name: str
    key: str
    iv: str
    sha256: str
    content_type: str
    filename: str | None
    size: int
    expires_ms: int
    # No asynchronous uploads on this server: `mxc` is ours, the real one comes at send time.
    placeholder: bool = False

    @property
    def file_key(self) -> FileKey:
        return FileKey(
            base64.b64decode(self.key), base64.b64decode(self.iv), base64.b64decode(self.sha256)
        )


@dataclass
class KnownMedia:
    """An encrypted file (or thumbnail) an event of this account referred to."""

    file: dict[str, Any]
    mimetype: str | None = None
    filename: str | None = None
    thumbnail: str | None = None


class MediaSpool:
    """Files on disk under the data dir; every byte in them is ciphertext. File I/O runs in
    the default executor, a chunk at a time: a slow disk never stalls the event loop, and no
    file is ever held in memory whole."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, name: str) -> Path:
        return self.directory / name

    def new_name(self) -> str:
        return secrets.token_hex(16)

    async def holds(self, name: str) -> bool:
        """Whether the spool file is here (a held upload of another instance is not)."""
        return await asyncio.to_thread(self.path(name).is_file)

    async def write(self, stream: AsyncIterator[bytes]) -> tuple[str, FileKey, int]:
        """Encrypt `stream` into a new spool file; returns its name, key and plaintext size."""
        name = self.new_name()
        encryptor = Encryptor()
        size = await self.store(name, _mapped(stream, encryptor.update))
        return name, encryptor.finish(), size

    async def store(self, name: str, stream: AsyncIterator[bytes]) -> int:
        """Write `stream` as it is into the new spool file `name` (removed again if the stream
        fails); returns how many bytes came."""
        handle = await asyncio.to_thread(_create, self.path(name))
        size = 0
        try:
            try:
                async for chunk in stream:
                    size += len(chunk)
                    await asyncio.to_thread(handle.write, chunk)
            finally:
                await asyncio.to_thread(handle.close)
        except BaseException:
            await self.discard(name)
            raise
        return size

    async def read(self, name: str, file_key: FileKey | None = None, *,
                   unlink: bool = False) -> AsyncIterator[bytes]:
        """The spool file's bytes: ciphertext, or plaintext when given its key. ``unlink``: the
        file is deleted once open (read once; gone from the disk before the reader is done)."""
        decryptor = Decryptor(file_key) if file_key is not None else None
        handle = await asyncio.to_thread(_open, self.path(name), unlink)
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK):
                yield decryptor.update(chunk) if decryptor else chunk
        finally:
            await asyncio.to_thread(handle.close)

    def remove_older_than(self, age_s: float) -> int:
        """Delete files older than `age_s` (left by a crash, or by an upload whose record is
        gone): every held upload expires sooner, so nothing in use is touched. Blocking: run
        it in an executor."""
        cutoff = time.time() - age_s
        removed = 0
        for path in self.directory.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed

    async def discard(self, name: str) -> None:
        """Delete a spool file (gone already is fine)."""
        await asyncio.to_thread(self._remove, name)

    def _remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(name).unlink()


def _open(path: Path, unlink: bool) -> BinaryIO:
    handle = path.open("rb")
    if unlink:
        path.unlink()
    return handle


def _create(path: Path) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


async def _mapped(stream: AsyncIterator[bytes], fn: Callable[[bytes], bytes]
                  ) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield fn(chunk)


class AccountMedia:
    """The pending uploads and known encrypted media of one account, kept in its store."""

    def __init__(self, account: Account, spool: MediaSpool) -> None:
        self.account = account
        self.spool = spool
        self._pending: dict[str, PendingUpload] | None = None
        self._known: OrderedDict[str, KnownMedia | None] = OrderedDict()
        # The server's m.upload.size (None: no limit known) and when it was asked.
        self.upload_limit: int | None = None
        self.upload_limit_at = float("-inf")

    async def pending(self) -> dict[str, PendingUpload]:
        if self._pending is None:
            raw = await self.account.store.get_secret(self.account.key, PENDING_SECRET)
            items = json.loads(raw) if raw else {}
            self._pending = {mxc: PendingUpload(**item) for mxc, item in items.items()}
        return self._pending

    async def _save_pending(self) -> None:
        items = {mxc: asdict(item) for mxc, item in (await self.pending()).items()}
        await self.account.store.put_secret(self.account.key, PENDING_SECRET, json.dumps(items))

    async def add_pending(self, upload: PendingUpload) -> None:
        (await self.pending())[upload.mxc] = upload
        await self._save_pending()

    async def get_pending(self, mxc: str) -> PendingUpload | None:
        """A held upload still within its lifetime (an expired one is dropped on sight)."""
        upload = (await self.pending()).get(mxc)
        if upload is not None and upload.expires_ms <= int(time.time() * 1000):
            await self.drop_pending(mxc)
            return None
        return upload

    async def drop_pending(self, mxc: str) -> None:
        upload = (await self.pending()).pop(mxc, None)
        if upload is not None:
            await self._save_pending()
            await self.spool.discard(upload.spool_name)

    async def expire(self, now_ms: int | None = None) -> int:
        """Forget uploads no event referred to in time; returns how many."""
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        expired = [m for m, u in (await self.pending()).items() if u.expires_ms <= now_ms]
        for mxc in expired:
            await self.drop_pending(mxc)
        return len(expired)

    async def drop_all(self) -> None:
        """Forget every held upload (logout): their spool files go too."""
        for mxc in list(await self.pending()):
            await self.drop_pending(mxc)

    async def known(self, mxc: str) -> KnownMedia | None:
        if mxc in self._known:
            self._known.move_to_end(mxc)
            return self._known[mxc]
        raw = await self.account.store.get_secret(self.account.key, KNOWN_PREFIX + mxc)
        media = KnownMedia(**json.loads(raw)) if raw else None
        self._remember(mxc, media)
        return media

    def _remember(self, mxc: str, media: KnownMedia | None) -> None:
        self._known[mxc] = media
        self._known.move_to_end(mxc)
        while len(self._known) > KNOWN_CACHE:
            self._known.popitem(last=False)

    async def add_known(self, mxc: str, media: KnownMedia) -> None:
        """Remember the key of an encrypted file. The first key wins: anyone in a room can name
        any URI in an event, and a second sender's key must not replace the one a first sender
        gave for the same file (downloads would decrypt with it). What the first left out (a
        mime type, a thumbnail) may be filled in by an event with the same key."""
        known = await self.known(mxc)
        if known is not None:
            if known.file != media.file:
                log.info("Kept the first key known for a file; another event named another")
                return
            media = KnownMedia(
                known.file,
                known.mimetype or media.mimetype,
                known.filename or media.filename,
                known.thumbnail or media.thumbnail,
            )
            if media == known:
                return
        await self.account.store.put_secret(
            self.account.key, KNOWN_PREFIX + mxc, json.dumps(asdict(media))
        )
        self._remember(mxc, media)


def _is_mxc(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("mxc://")


def media_of_event(content: dict[str, Any]) -> list[tuple[str, KnownMedia]]:
    """The encrypted files a decrypted event's content refers to (file and thumbnail).

    Unusable descriptions (unknown version, bad key) are kept too: downloading them must be a
    clear error, never the ciphertext passed through as if it were the file.
    """
    found: list[tuple[str, KnownMedia]] = []
    raw_info = content.get("info")
    info: dict[str, Any] = raw_info if isinstance(raw_info, dict) else {}
    thumb = info.get("thumbnail_file")
    thumbnail_url = thumb["url"] if isinstance(thumb, dict) and _is_mxc(thumb.get("url")) else None
    if isinstance(thumb, dict) and thumbnail_url is not None:
        thumb_info = info.get("thumbnail_info")
        mimetype = thumb_info.get("mimetype") if isinstance(thumb_info, dict) else None
        found.append((thumbnail_url, KnownMedia(thumb, _str(mimetype))))
    file = content.get("file")
    if isinstance(file, dict) and _is_mxc(file.get("url")):
        filename = _str(content.get("filename")) or _str(content.get("body"))
        known = KnownMedia(file, _str(info.get("mimetype")), filename, thumbnail_url)
        found.append((file["url"], known))
    return found


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def expose_urls(content: dict[str, Any]) -> None:
    """A plain client knows `url` and `thumbnail_url`, not `file`: point them at the encrypted
    media, which the proxy decrypts on download."""
    file = content.get("file")
    if isinstance(file, dict) and isinstance(file.get("url"), str) and "url" not in content:
        content["url"] = file["url"]
    info = content.get("info")
    thumb = info.get("thumbnail_file") if isinstance(info, dict) else None
    if isinstance(thumb, dict) and isinstance(thumb.get("url"), str):
        assert isinstance(info, dict)
        info.setdefault("thumbnail_url", thumb["url"])


class MediaService:
    """The spool and each account's media records (one per app)."""

    def __init__(self, spool: MediaSpool, upload_ttl_s: float) -> None:
        self.spool = spool
        self.upload_ttl_s = upload_ttl_s
        self._accounts: dict[Any, AccountMedia] = {}

    def of(self, account: Account) -> AccountMedia:
        media = self._accounts.get(account.key)
        if media is None or media.account is not account:
            media = self._accounts[account.key] = AccountMedia(account, self.spool)
        return media

    def forget(self, account: Account) -> None:
        self._accounts.pop(account.key, None)

    async def expire_all(self, accounts: list[Account]) -> None:
        # An hour of slack past the lifetime, for clocks and uploads still being written.
        await asyncio.to_thread(self.spool.remove_older_than, self.upload_ttl_s + 3600)
        for account in accounts:
            expired = await self.of(account).expire()
            if expired:
                log.info(
                    "Dropped %d upload(s) of %s that no event used in time",
                    expired,
                    account.device_id,
                )


async def expire_uploads_forever(service: MediaService, accounts: Any) -> None:
    """Every few minutes, forget uploads no event referred to within their lifetime."""
    while True:
        await asyncio.sleep(EXPIRY_CHECK_S)
        try:
            await service.expire_all(list(accounts()))
        except Exception:
            log.exception("Expiring held uploads failed")
