"""The background sync's filter: what crypto needs of a /sync, uploaded once per user and then
named by its id (the homeserver parses it once, and every round's request line stays short).

The id is kept in the store with a digest of the filter, so a restart reuses it and a new
version of the filter is uploaded afresh. A server that cannot take it (or forgot the id) gets
the filter inline until a later upload succeeds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from urllib.parse import quote

from e2eproxy.errors import UpstreamError
from e2eproxy.proxy.account import Account
from e2eproxy.proxy.upstream import Upstream

log = logging.getLogger(__name__)

CRYPTO_FILTER = {
    "presence": {"not_types": ["*"]},
    "account_data": {"not_types": ["*"]},
    "room": {
        "timeline": {
            "limit": 50,
            # Encrypted events and verification ones: in-room verification reaches the engine
            # while no client syncs (decrypted only when there are any).
            "types": ["m.room.encryption", "m.room.member", "m.room.history_visibility",
                      "m.room.encrypted", "m.key.verification.*"],
        },
        "state": {
            "types": ["m.room.encryption", "m.room.member", "m.room.history_visibility"],
            "lazy_load_members": False,
        },
        "ephemeral": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
        "include_leave": True,
    },
}
_FILTER_JSON = json.dumps(CRYPTO_FILTER, separators=(",", ":"), sort_keys=True)
INLINE_PARAM = quote(_FILTER_JSON)
# Names this version of the filter in the store: a changed filter is uploaded again.
FILTER_DIGEST = hashlib.sha256(_FILTER_JSON.encode()).hexdigest()[:16]
FILTER_SECRET = "background_filter"
# After a failed upload the filter goes inline; another upload is tried this much later.
RETRY_UPLOAD_S = 600.0


@dataclass
class BackgroundFilter:
    """The `filter` query value of one account's background sync."""

    upstream: Upstream
    account: Account
    filter_id: str | None = None
    loaded: bool = False
    failed_at: float | None = None

    async def param(self, *, upload: bool = True) -> str:
        """The filter's id when the server has it, else the filter inline. Without `upload`,
        none is uploaded now (an account's first sync is not held up by it)."""
        if not self.loaded:
            self.loaded = True
            self.filter_id = _stored_id(
                await self.account.store.get_secret(self.account.key, FILTER_SECRET))
        if self.filter_id is None and upload and self._may_upload():
            self.filter_id = await self._upload()
        return quote(self.filter_id, safe="") if self.filter_id else INLINE_PARAM

    def forget(self) -> None:
        """The server refused a sync that named the id (it may have lost it): upload again."""
        self.filter_id = None

    def _may_upload(self) -> bool:
        now = self.account.timer.monotonic()
        return self.failed_at is None or now - self.failed_at >= RETRY_UPLOAD_S

    async def _upload(self) -> str | None:
        account = self.account
        path = f"/_matrix/client/v3/user/{quote(account.user_id, safe='')}/filter"
        try:
            status, body = await self.upstream.request_json(
                "POST", path, access_token=account.access_token, body=CRYPTO_FILTER)
        except UpstreamError as exc:
            status, body = exc.status, None
        filter_id = body.get("filter_id") if isinstance(body, dict) else None
        if status != 200 or not isinstance(filter_id, str) or not filter_id:
            log.info("Background sync filter for %s not uploaded (%s); sent inline",
                     account.device_id, status)
            self.failed_at = account.timer.monotonic()
            return None
        self.failed_at = None
        await account.store.put_secret(account.key, FILTER_SECRET, f"{FILTER_DIGEST}:{filter_id}")
        return filter_id


def _stored_id(value: str | None) -> str | None:
    if value is None:
        return None
    digest, _, filter_id = value.partition(":")
    return filter_id if digest == FILTER_DIGEST and filter_id else None
