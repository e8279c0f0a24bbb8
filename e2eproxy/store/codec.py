"""Engine records <-> JSON bytes. Live vodozemac objects become pickles under the pickle key.

Every backend stores these bytes (SQLite encrypts them further with the value key), so a loaded
record is always a fresh object, never the live one the engine may still hold.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import vodozemac

from e2eproxy.crypto.changes import (
    AccountRecord,
    BackupRecord,
    CrossSigningRecord,
    DeviceRecord,
    IdentityRecord,
    InboundGroupSessionRecord,
    OlmSessionRecord,
    OutboundGroupSessionRecord,
    ReplayRecord,
    RoomRecord,
    TrackedUserRecord,
    WithheldRecord,
)
from e2eproxy.crypto.settings import EncryptionSettings, LocalTrust
from e2eproxy.errors import StoreCorrupt
from e2eproxy.protocol.api import OutgoingRequest, RequestKind
from e2eproxy.types import DeviceId, RoomId, SessionId, UserId

T = TypeVar("T")


def dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def loads(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise StoreCorrupt("a stored record is not valid JSON") from exc
    if not isinstance(value, dict):
        raise StoreCorrupt("a stored record is not an object")
    return value


def _unpickle(cls: Any, pickle: str, key: bytes) -> Any:
    try:
        return cls.from_pickle(pickle, key)
    except vodozemac.PickleException as exc:
        raise StoreCorrupt(f"a stored {cls.__name__} cannot be unpickled") from exc


def account_to(record: AccountRecord, key: bytes) -> dict[str, Any]:
    return {
        "pickle": record.account.pickle(key),
        "device_keys_uploaded": record.device_keys_uploaded,
        "fallback_created_ms": record.fallback_created_ms,
        "otk_server_count": record.otk_server_count,
    }


def account_from(value: dict[str, Any], key: bytes) -> AccountRecord:
    return AccountRecord(
        account=_unpickle(vodozemac.Account, value["pickle"], key),
        device_keys_uploaded=value["device_keys_uploaded"],
        fallback_created_ms=value["fallback_created_ms"],
        otk_server_count=value["otk_server_count"],
    )


def olm_to(record: OlmSessionRecord, key: bytes) -> dict[str, Any]:
    return {
        "sender_key": record.sender_key,
        "session_id": record.session_id,
        "pickle": record.session.pickle(key),
        "created_ms": record.created_ms,
        "last_used_ms": record.last_used_ms,
        "last_received_ms": record.last_received_ms,
    }


def olm_from(value: dict[str, Any], key: bytes) -> OlmSessionRecord:
    return OlmSessionRecord(
        sender_key=value["sender_key"],
        session_id=value["session_id"],
        session=_unpickle(vodozemac.Session, value["pickle"], key),
        created_ms=value["created_ms"],
        last_used_ms=value["last_used_ms"],
        last_received_ms=value["last_received_ms"],
    )


def inbound_to(record: InboundGroupSessionRecord, key: bytes) -> dict[str, Any]:
    return {
        "room_id": record.room_id,
        "session_id": record.session_id,
        "sender_key": record.sender_key,
        "signing_key": record.signing_key,
        "pickle": record.session.pickle(key),
        "imported": record.imported,
        "shared_history": record.shared_history,
        "first_known_index": record.first_known_index,
    }


def inbound_from(value: dict[str, Any], key: bytes) -> InboundGroupSessionRecord:
    return InboundGroupSessionRecord(
        room_id=RoomId(value["room_id"]),
        session_id=SessionId(value["session_id"]),
        sender_key=value["sender_key"],
        signing_key=value["signing_key"],
        session=_unpickle(vodozemac.InboundGroupSession, value["pickle"], key),
        imported=value["imported"],
        shared_history=value["shared_history"],
        first_known_index=value["first_known_index"],
    )


def outbound_to(record: OutboundGroupSessionRecord, key: bytes) -> dict[str, Any]:
    return {
        "room_id": record.room_id,
        "pickle": record.session.pickle(key),
        "created_ms": record.created_ms,
        "message_count": record.message_count,
        "settings": record.settings.to_json(),
        "shared_with": record.shared_with,
        "pending_requests": sorted(record.pending_requests),
        "shared": record.shared,
    }


def outbound_from(value: dict[str, Any], key: bytes) -> OutboundGroupSessionRecord:
    shared_with = {
        UserId(user): {DeviceId(device): index for device, index in devices.items()}
        for user, devices in value["shared_with"].items()
    }
    return OutboundGroupSessionRecord(
        room_id=RoomId(value["room_id"]),
        session=_unpickle(vodozemac.GroupSession, value["pickle"], key),
        created_ms=value["created_ms"],
        message_count=value["message_count"],
        settings=EncryptionSettings(**value["settings"]),
        shared_with=shared_with,
        pending_requests=set(value["pending_requests"]),
        shared=value["shared"],
    )


def device_to(record: DeviceRecord) -> dict[str, Any]:
    return {
        "user_id": record.user_id,
        "device_id": record.device_id,
        "keys": record.keys,
        "local_trust": record.local_trust.value,
        "deleted": record.deleted,
        "no_olm_sent": record.no_olm_sent,
        "last_unwedge_ms": record.last_unwedge_ms,
    }


def device_from(value: dict[str, Any]) -> DeviceRecord:
    return DeviceRecord(
        user_id=UserId(value["user_id"]),
        device_id=DeviceId(value["device_id"]),
        keys=value["keys"],
        local_trust=LocalTrust(value["local_trust"]),
        deleted=value["deleted"],
        no_olm_sent=value["no_olm_sent"],
        last_unwedge_ms=value["last_unwedge_ms"],
    )


def tracked_to(record: TrackedUserRecord) -> dict[str, Any]:
    return {"user_id": record.user_id, "dirty": record.dirty, "seq": record.seq}


def tracked_from(value: dict[str, Any]) -> TrackedUserRecord:
    return TrackedUserRecord(UserId(value["user_id"]), True, value["dirty"], value["seq"])


# Records that are nothing but their fields, stored under these keys (spelled out, so that a
# renamed field cannot silently change what is on disk).
_PLAIN_FIELDS: dict[type, tuple[str, ...]] = {
    CrossSigningRecord: ("master", "self_signing", "user_signing", "uploaded"),
    BackupRecord: ("version", "auth_data", "private_key"),
    IdentityRecord: ("user_id", "keys", "pinned_master", "verified", "previously_verified"),
    RoomRecord: ("room_id", "encryption", "history_visibility", "members"),
    ReplayRecord: ("room_id", "session_id", "message_index", "event_id", "origin_server_ts"),
    WithheldRecord: ("room_id", "session_id", "sender_key", "code", "reason"),
}


def plain_to(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _PLAIN_FIELDS[type(record)]}


def plain_from(cls: type[T], value: dict[str, Any]) -> T:
    try:
        return cls(*(value[name] for name in _PLAIN_FIELDS[cls]))
    except (KeyError, TypeError) as exc:
        raise StoreCorrupt(f"a stored {cls.__name__} is incomplete") from exc


def request_to(request: OutgoingRequest) -> dict[str, Any]:
    return {
        "id": request.id,
        "kind": request.kind.value,
        "method": request.method,
        "path": request.path,
        "body": request.body,
    }


def request_from(value: dict[str, Any]) -> OutgoingRequest:
    return OutgoingRequest(
        value["id"], RequestKind(value["kind"]), value["method"], value["path"], value["body"]
    )
