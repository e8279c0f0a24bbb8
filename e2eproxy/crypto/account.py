"""Our own Olm account: identity keys, signed device keys, one-time and fallback key upkeep."""

from __future__ import annotations

import copy
from typing import Any

import vodozemac

from e2eproxy.crypto.changes import AccountRecord, ChangeLog
from e2eproxy.crypto.settings import MEGOLM_ALGORITHM, OLM_ALGORITHM
from e2eproxy.protocol.canonical import sign_json
from e2eproxy.types import DeviceId, UserId

FALLBACK_MAX_AGE_MS = 7 * 24 * 3600 * 1000
OTK_ALGORITHM = "signed_curve25519"


class _Uploads:
    """Key uploads the server acknowledged, counted for the whole process: a count read by the
    shell before a sync request stays comparable with an account's latest upload even when its
    engine is rebuilt from the store in between (a new engine would count from zero)."""

    acknowledged = 0


class AccountState:
    """Wraps the vodozemac ``Account`` with the metadata of what the server has."""

    def __init__(
        self, user_id: UserId, device_id: DeviceId, record: AccountRecord, log: ChangeLog
    ) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.record = record
        self._log = log
        self.upload_in_flight: str | None = None
        # ``_Uploads.acknowledged`` when this account's latest key upload was acknowledged: a
        # sync requested before then may have been answered before the server had it.
        self.last_upload = 0
        self._fallback_used = False
        self._device_keys: dict[str, Any] | None = None

    @property
    def account(self) -> vodozemac.Account:
        return self.record.account

    @property
    def ed25519(self) -> str:
        return self.account.ed25519_key.to_base64()

    @property
    def curve25519(self) -> str:
        return self.account.curve25519_key.to_base64()

    @property
    def identity_keys(self) -> dict[str, str]:
        return {"ed25519": self.ed25519, "curve25519": self.curve25519}

    def sign(self, message: bytes) -> str:
        return self.account.sign(message).to_base64()

    def sign_json(self, value: dict[str, Any]) -> dict[str, Any]:
        """``value`` signed with our device key under ``ed25519:<device_id>``."""
        return sign_json(value, self.user_id, f"ed25519:{self.device_id}", self.sign)

    def device_keys(self) -> dict[str, Any]:
        """The signed ``device_keys`` object for ``/keys/upload`` (and MSC4147's
        ``sender_device_keys``); Ed25519 signatures are deterministic, so it is built once."""
        if self._device_keys is not None:
            return copy.deepcopy(self._device_keys)
        keys = {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": [OLM_ALGORITHM, MEGOLM_ALGORITHM],
            "keys": {
                f"curve25519:{self.device_id}": self.curve25519,
                f"ed25519:{self.device_id}": self.ed25519,
            },
        }
        self._device_keys = self.sign_json(keys)
        return copy.deepcopy(self._device_keys)

    def update_counts(
        self, otk_counts: Any, fallback_types: Any, now_ms: int, key_uploads: int | None = None
    ) -> None:
        """Take ``device_one_time_keys_count`` / ``device_unused_fallback_key_types`` from sync.

        ``key_uploads``: ``key_uploads()`` read when the sync was requested. A body requested
        before our latest upload was acknowledged may describe the keys from before it (its
        "no unused fallback key" is about the key that upload replaced), so its counts are not
        taken: the next sync reports them again. None: the body is known to be current.
        """
        if key_uploads is not None and key_uploads < self.last_upload:
            return
        if isinstance(otk_counts, dict):
            count = otk_counts.get(OTK_ALGORITHM, 0)
            valid = isinstance(count, int) and not isinstance(count, bool) and count >= 0
            if valid and count != self.record.otk_server_count:
                self.record.otk_server_count = count
                self._log.account(self.record)
        if isinstance(fallback_types, list):
            # No unused fallback key on the server: it was used (or never uploaded).
            self._fallback_used = (
                self.record.device_keys_uploaded and OTK_ALGORITHM not in fallback_types
            )

    def _wanted_otks(self) -> int:
        target = self.account.max_number_of_one_time_keys // 2
        known = self.record.otk_server_count
        if known is None:
            known = 0 if not self.record.device_keys_uploaded else target
        unpublished = len(self.account.one_time_keys)
        return max(0, target - known - unpublished)

    def _fallback_due(self, now_ms: int) -> bool:
        if self.account.fallback_key:  # type: ignore[attr-defined]
            # One generated and not published yet: a second would push the published one out
            # of the account (it keeps two) while peers may still use it; upload this one.
            return False
        created = self.record.fallback_created_ms
        return created is None or self._fallback_used or now_ms - created >= FALLBACK_MAX_AGE_MS

    def upload_body(self, now_ms: int) -> dict[str, Any] | None:
        """What needs uploading now, generating keys as needed; None if nothing.

        Generated keys are logged as an account change: persist before sending the upload.
        """
        if self.upload_in_flight is not None:
            return None
        changed = False
        wanted = self._wanted_otks()
        if wanted:
            self.account.generate_one_time_keys(wanted)
            changed = True
        if self._fallback_due(now_ms):
            self.account.generate_fallback_key()  # type: ignore[attr-defined]
            self.record.fallback_created_ms = now_ms
            self._fallback_used = False
            changed = True
        if changed:
            self._log.account(self.record)
        body: dict[str, Any] = {}
        if not self.record.device_keys_uploaded:
            body["device_keys"] = self.device_keys()
        otks = self._signed_keys(dict(self.account.one_time_keys), fallback=False)
        if otks:
            body["one_time_keys"] = otks
        fallback = self._signed_keys(
            dict(self.account.fallback_key), fallback=True  # type: ignore[attr-defined]
        )
        if fallback:
            body["fallback_keys"] = fallback
        return body or None

    def _signed_keys(
        self, keys: dict[str, vodozemac.Curve25519PublicKey], *, fallback: bool
    ) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_id, key in keys.items():
            obj: dict[str, Any] = {"key": key.to_base64()}
            if fallback:
                obj["fallback"] = True
            result[f"{OTK_ALGORITHM}:{key_id}"] = self.sign_json(obj)
        return result

    def upload_succeeded(self, response: Any) -> None:
        """Mark everything that was in the upload as published (only now)."""
        self.upload_in_flight = None
        self.account.mark_keys_as_published()
        self.record.device_keys_uploaded = True
        _Uploads.acknowledged += 1
        self.last_upload = _Uploads.acknowledged
        # A "used" report seen so far was about a key this upload replaced (or, if it carried
        # none, is sent again by the next sync, requested after it).
        self._fallback_used = False
        counts = response.get("one_time_key_counts") if isinstance(response, dict) else None
        if isinstance(counts, dict):
            count = counts.get(OTK_ALGORITHM, 0)
            if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
                self.record.otk_server_count = count
        self._log.account(self.record)

    @staticmethod
    def key_uploads() -> int:
        return _Uploads.acknowledged

    def upload_failed(self) -> None:
        """Keys stay unpublished and are offered again by the next ``upload_body``."""
        self.upload_in_flight = None
