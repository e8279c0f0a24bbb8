"""End-to-end keys: device keys, one-time and fallback keys, cross-signing keys, and the
log of device-list changes that /sync and /keys/changes report."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from .accounts import Accounts
from .errors import MatrixError, bad_json_field
from .stream import Stream

JsonDict = dict[str, Any]
CROSS_SIGNING_KINDS = ("master", "self_signing", "user_signing")


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@dataclass
class FallbackKey:
    key_id: str
    key: JsonDict
    used: bool = False


@dataclass
class DeviceKeyState:
    device_keys: JsonDict | None = None
    one_time_keys: dict[str, JsonDict] = field(default_factory=dict)  # "alg:id" -> key
    fallback_keys: dict[str, FallbackKey] = field(default_factory=dict)  # alg -> key


class KeyStore:
    def __init__(self, accounts: Accounts, stream: Stream) -> None:
        self.accounts = accounts
        self.stream = stream
        self.devices: dict[tuple[str, str], DeviceKeyState] = {}
        self.cross_signing: dict[str, dict[str, JsonDict]] = {}
        self.changes: list[tuple[int, str]] = []

    def state(self, user_id: str, device_id: str) -> DeviceKeyState:
        return self.devices.setdefault((user_id, device_id), DeviceKeyState())

    def mark_changed(self, user_id: str) -> int:
        position = self.stream.advance()
        self.changes.append((position, user_id))
        return position

    def changed_users(self, after: int, upto: int) -> set[str]:
        return {user for pos, user in self.changes if after < pos <= upto}

    def forget_device(self, user_id: str, device_id: str) -> None:
        self.devices.pop((user_id, device_id), None)

    # upload

    def upload(self, user_id: str, device_id: str, body: JsonDict) -> bool:
        """Store an upload; returns whether the device keys are new (a device-list change)."""
        state = self.state(user_id, device_id)
        changed = False
        device_keys = body.get("device_keys")
        if device_keys:
            if device_keys.get("user_id") != user_id or device_keys.get("device_id") != device_id:
                raise bad_json_field("device_keys user_id/device_id do not match the requester")
            if state.device_keys is None:
                state.device_keys = copy.deepcopy(device_keys)
                changed = True
            elif not _same(state.device_keys, device_keys):
                raise MatrixError(
                    400, "M_INVALID_PARAM",
                    f"Device keys for {user_id}/{device_id} already uploaded and differ",
                )
        otks: JsonDict = body.get("one_time_keys") or {}
        for key_id, key in otks.items():
            existing = state.one_time_keys.get(key_id)
            if existing is not None and not _same(existing, key):
                algorithm, _, kid = key_id.partition(":")
                raise MatrixError(
                    400, "M_UNKNOWN",
                    f"One time key {algorithm}:{kid} already exists. "
                    f"Old key: {json.dumps(existing)}; new key: {key!r}",
                )
        for key_id, key in otks.items():
            state.one_time_keys.setdefault(key_id, copy.deepcopy(key))
        fallbacks: JsonDict = (
            body.get("fallback_keys") or body.get("org.matrix.msc2732.fallback_keys") or {}
        )
        for key_id, key in fallbacks.items():
            algorithm = key_id.partition(":")[0]
            current = state.fallback_keys.get(algorithm)
            if current is None or current.key_id != key_id or not _same(current.key, key):
                state.fallback_keys[algorithm] = FallbackKey(key_id, copy.deepcopy(key))
        return changed

    def one_time_key_counts(self, user_id: str, device_id: str) -> dict[str, int]:
        counts: dict[str, int] = {"signed_curve25519": 0}
        for key_id in self.state(user_id, device_id).one_time_keys:
            algorithm = key_id.partition(":")[0]
            counts[algorithm] = counts.get(algorithm, 0) + 1
        return counts

    def unused_fallback_types(self, user_id: str, device_id: str) -> list[str]:
        fallbacks = self.state(user_id, device_id).fallback_keys
        return sorted(alg for alg, fb in fallbacks.items() if not fb.used)

    # query / claim

    def query(self, requester: str, wanted: dict[str, list[str]]) -> JsonDict:
        result: JsonDict = {"device_keys": {}, "failures": {}}
        for kind in CROSS_SIGNING_KINDS:
            result[f"{kind}_keys"] = {}
        for user_id, device_ids in wanted.items():
            user = self.accounts.users.get(user_id)
            devices: JsonDict = {}
            result["device_keys"][user_id] = devices
            if user is None:
                continue
            for device_id, device in user.devices.items():
                if device_ids and device_id not in device_ids:
                    continue
                stored = self.devices.get((user_id, device_id))
                if stored is None or stored.device_keys is None:
                    continue
                keys = copy.deepcopy(stored.device_keys)
                keys["unsigned"] = {"device_display_name": device.display_name}
                devices[device_id] = keys
            for kind, key in self.cross_signing.get(user_id, {}).items():
                if kind != "user_signing" or user_id == requester:
                    result[f"{kind}_keys"][user_id] = copy.deepcopy(key)
        return result

    def claim(self, wanted: dict[str, dict[str, str]]) -> JsonDict:
        claimed: JsonDict = {}
        for user_id, devices in wanted.items():
            for device_id, algorithm in devices.items():
                stored = self.devices.get((user_id, device_id))
                if stored is None:
                    continue
                key_id = next(
                    (k for k in stored.one_time_keys if k.partition(":")[0] == algorithm), None
                )
                if key_id is not None:
                    key = stored.one_time_keys.pop(key_id)
                elif algorithm in stored.fallback_keys:
                    fallback = stored.fallback_keys[algorithm]
                    fallback.used = True
                    key_id, key = fallback.key_id, copy.deepcopy(fallback.key)
                else:
                    continue
                claimed.setdefault(user_id, {})[device_id] = {key_id: key}
        return {"one_time_keys": claimed, "failures": {}}

    # cross-signing

    def upload_cross_signing(self, user_id: str, body: JsonDict) -> None:
        keys = self.cross_signing.setdefault(user_id, {})
        for kind in CROSS_SIGNING_KINDS:
            key = body.get(f"{kind}_key")
            if key is None:
                continue
            if key.get("user_id") != user_id:
                raise bad_json_field(f"{kind}_key user_id does not match the requester")
            keys[kind] = copy.deepcopy(key)

    def upload_signatures(self, body: JsonDict) -> JsonDict:
        failures: JsonDict = {}
        for user_id, signed_objects in body.items():
            for key_id, signed in signed_objects.items():
                target = self._signable(user_id, key_id)
                if target is None:
                    failures.setdefault(user_id, {})[key_id] = {
                        "errcode": "M_INVALID_SIGNATURE", "error": "Unknown key",
                    }
                    continue
                for signer, sigs in signed.get("signatures", {}).items():
                    target.setdefault("signatures", {}).setdefault(signer, {}).update(sigs)
        return {"failures": failures}

    def _signable(self, user_id: str, key_id: str) -> JsonDict | None:
        stored = self.devices.get((user_id, key_id))
        if stored is not None and stored.device_keys is not None:
            return stored.device_keys
        for key in self.cross_signing.get(user_id, {}).values():
            if any(k.partition(":")[2] == key_id for k in key.get("keys", {})):
                return key
        return None
