"""Canonical JSON, unpadded base64 and JSON signatures (spec appendices)."""

from __future__ import annotations

import base64
import binascii
import copy
import json
from collections.abc import Callable
from typing import Any

import canonicaljson
import vodozemac


def parse_json(data: bytes | str) -> Any:
    """``json.loads`` for data from outside (a server, a peer, a file): JSON nested deeper
    than the interpreter recurses is a ``ValueError`` like any other bad JSON, instead of a
    ``RecursionError`` that no caller expects (one event of a room would fail every sync)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def canonical_json(value: Any) -> bytes:
    """The spec's canonical JSON encoding (sorted keys, no whitespace, UTF-8)."""
    result: bytes = canonicaljson.encode_canonical_json(value)
    return result


def b64encode(data: bytes) -> str:
    """Standard-alphabet base64 without padding (the Matrix format)."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64decode(text: str) -> bytes:
    """Decode padded or unpadded standard base64; raises ``ValueError`` on bad input."""
    if not isinstance(text, str):
        raise ValueError("base64 value is not a string")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("invalid base64") from exc


def signable(value: dict[str, Any]) -> bytes:
    """The bytes that are signed for ``value``: canonical JSON without signatures/unsigned."""
    stripped = {k: v for k, v in value.items() if k not in ("signatures", "unsigned")}
    return canonical_json(stripped)


def sign_json(
    value: dict[str, Any], signer: str, key_id: str, sign: Callable[[bytes], str]
) -> dict[str, Any]:
    """Return a copy of ``value`` with ``signatures[signer][key_id]`` added.

    ``sign`` maps message bytes to an unpadded base64 Ed25519 signature.
    """
    signed = copy.deepcopy(value)
    signature = sign(signable(value))
    signatures = signed.setdefault("signatures", {})
    signatures.setdefault(signer, {})[key_id] = signature
    return signed


def verify_json(value: Any, signer: str, key_id: str, ed25519_key: str) -> bool:
    """True when ``value`` carries a valid signature by ``ed25519_key`` under signer/key_id.

    Never raises: any malformed input is simply an invalid signature.
    """
    try:
        signature = value["signatures"][signer][key_id]
        if not isinstance(signature, str) or not isinstance(ed25519_key, str):
            return False
        public = vodozemac.Ed25519PublicKey.from_base64(ed25519_key)
        public.verify_signature(signable(value), vodozemac.Ed25519Signature.from_base64(signature))
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
        return False
    return True
