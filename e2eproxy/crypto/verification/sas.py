"""The ``m.sas.v1`` exchange (spec "Short Authentication String (SAS) verification"): protocol
choice, hash commitment, ephemeral key agreement, the short string, and the MACs.

vodozemac does the X25519 agreement, the HKDF bytes and the HKDF-HMAC MACs; the protocol glue
is here and follows the spec and matrix-rust-sdk's ``verification/sas/helpers.rs``:

- commitment = unpadded base64 of SHA-256(our public key as unpadded base64 ‖ canonical JSON of
  the start content, exactly as sent, flow fields included);
- SAS info = ``MATRIX_KEY_VERIFICATION_SAS|<start user>|<start device>|<start key>|<accept
  user>|<accept device>|<accept key>|<flow id>`` (the starter is whoever sent the start that
  counts, the flow id is the transaction id or the in-room request's event id);
- MAC info = ``MATRIX_KEY_VERIFICATION_MAC<sender user><sender device><receiver user><receiver
  device><flow id>`` followed by the key id, or ``KEY_IDS`` for the sorted comma-joined ids.

Failures are raised as ``SasCancel`` with the spec's cancel code; the flow turns them into a
cancel message. Nothing here logs: the shared secret never leaves vodozemac.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import vodozemac

from e2eproxy.crypto.verification.emoji import Emoji, emoji_for
from e2eproxy.crypto.verification.events import (
    INVALID_MESSAGE,
    KEY_MISMATCH,
    MISMATCHED_COMMITMENT,
    SAS_V1,
    UNKNOWN_METHOD,
    VerifiedKeys,
)
from e2eproxy.protocol.canonical import b64decode, b64encode, canonical_json

KEY_AGREEMENT = "curve25519-hkdf-sha256"
HASH = "sha256"
MAC_V2 = "hkdf-hmac-sha256.v2"
MAC_MSC3783 = "org.matrix.msc3783.hkdf-hmac-sha256"  # v2's unstable name (rust-sdk offers it)
MAC_LEGACY = "hkdf-hmac-sha256"  # deprecated: libolm's wrong base64, used only if offered alone
DECIMAL, EMOJI = "decimal", "emoji"
OUR_MACS = (MAC_V2, MAC_LEGACY)  # what we offer when we start, best first
_MAC_PREFERENCE = (MAC_V2, MAC_MSC3783, MAC_LEGACY)
OUR_SAS = (DECIMAL, EMOJI)
SAS_PREFIX = "MATRIX_KEY_VERIFICATION_SAS"
MAC_PREFIX = "MATRIX_KEY_VERIFICATION_MAC"


class SasCancel(Exception):
    """The exchange cannot go on; ``code`` is the spec's cancel code."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Party:
    user_id: str
    device_id: str


@dataclass(frozen=True, slots=True)
class Protocols:
    """What the accept settled on."""

    key_agreement: str
    hash: str
    mac: str
    sas: tuple[str, ...]


def commitment(public_key: str, start_content: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(public_key.encode() + canonical_json(dict(start_content))).digest()
    return b64encode(digest)


def sas_info(starter: Party, starter_key: str, acceptor: Party, acceptor_key: str,
             flow_id: str) -> str:
    return (f"{SAS_PREFIX}|{starter.user_id}|{starter.device_id}|{starter_key}|"
            f"{acceptor.user_id}|{acceptor.device_id}|{acceptor_key}|{flow_id}")


def mac_info(sender: Party, receiver: Party, flow_id: str) -> str:
    """The MAC info without its key id: append the key id or ``KEY_IDS``."""
    return (f"{MAC_PREFIX}{sender.user_id}{sender.device_id}"
            f"{receiver.user_id}{receiver.device_id}{flow_id}")


def start_fields(device_id: str) -> dict[str, Any]:
    """Our ``m.sas.v1`` start content, without the flow fields."""
    return {
        "from_device": device_id,
        "method": SAS_V1,
        "key_agreement_protocols": [KEY_AGREEMENT],
        "hashes": [HASH],
        "message_authentication_codes": list(OUR_MACS),
        "short_authentication_string": list(OUR_SAS),
    }


def _strings(content: Mapping[str, Any], name: str) -> list[str]:
    value = content.get(name)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SasCancel(INVALID_MESSAGE, f"{name} is not a list of strings")
    return value


def choose_protocols(start: Mapping[str, Any]) -> Protocols:
    """What we accept from their start (rust-sdk's choice: v2 MAC first; decimal always)."""
    if start.get("method") != SAS_V1:
        raise SasCancel(UNKNOWN_METHOD, f"unsupported method {start.get('method')!r}")
    macs = _strings(start, "message_authentication_codes")
    sas = [m for m in OUR_SAS if m in _strings(start, "short_authentication_string")]
    if KEY_AGREEMENT not in _strings(start, "key_agreement_protocols"):
        raise SasCancel(UNKNOWN_METHOD, "no common key agreement protocol")
    if HASH not in _strings(start, "hashes"):
        raise SasCancel(UNKNOWN_METHOD, "no common hash")
    mac = next((m for m in _MAC_PREFERENCE if m in macs), None)
    if mac is None or not sas:
        raise SasCancel(UNKNOWN_METHOD, "no common MAC or short authentication string method")
    return Protocols(KEY_AGREEMENT, HASH, mac, tuple(sas))


def check_accept(accept: Mapping[str, Any]) -> Protocols:
    """Their accept of our start: every choice must be one we offered."""
    sas = _strings(accept, "short_authentication_string")
    chosen = (accept.get("key_agreement_protocol"), accept.get("hash"),
              accept.get("message_authentication_code"))
    if chosen[0] != KEY_AGREEMENT or chosen[1] != HASH or chosen[2] not in OUR_MACS:
        raise SasCancel(UNKNOWN_METHOD, "the accept chose a method we did not offer")
    known = tuple(m for m in OUR_SAS if m in sas)
    if not known:
        raise SasCancel(UNKNOWN_METHOD, "the accept chose no short authentication string")
    return Protocols(KEY_AGREEMENT, HASH, str(chosen[2]), known)


def _same_base64(a: str, b: str) -> bool:
    try:
        return hmac.compare_digest(b64decode(a), b64decode(b))
    except ValueError:
        return False


class SasExchange:
    """The SAS protocol between ``me`` and ``other`` for one flow, once a start is settled.

    The starter sends its key on the accept, the acceptor answers the starter's key with its
    own; then both hold the shared secret. Our ephemeral key is fixed at construction, so the
    commitment we send covers the key we later reveal.
    """

    def __init__(self, me: Party, other: Party, flow_id: str) -> None:
        self.me, self.other, self.flow_id = me, other, flow_id
        self._sas = vodozemac.Sas()
        self.public_key: str = self._sas.public_key.to_base64()
        self.we_started = False
        self.protocols: Protocols | None = None
        self._start: dict[str, Any] | None = None
        self._their_commitment: str | None = None
        self._their_key: str | None = None
        self._established: vodozemac.EstablishedSas | None = None

    @property
    def established(self) -> bool:
        return self._established is not None

    def we_start(self, content: Mapping[str, Any]) -> None:
        """We sent ``content`` (flow fields included) as the start."""
        self.we_started, self._start = True, dict(content)

    def receive_start(self, content: Mapping[str, Any]) -> dict[str, Any]:
        """Their start counts: the accept fields (without flow fields) to send."""
        self.protocols = choose_protocols(content)
        self.we_started, self._start = False, dict(content)
        return {
            "method": SAS_V1,
            "key_agreement_protocol": self.protocols.key_agreement,
            "hash": self.protocols.hash,
            "message_authentication_code": self.protocols.mac,
            "short_authentication_string": list(self.protocols.sas),
            "commitment": commitment(self.public_key, content),
        }

    def receive_accept(self, content: Mapping[str, Any]) -> dict[str, Any]:
        """Their accept of our start: our key fields to send."""
        theirs = content.get("commitment")
        if not isinstance(theirs, str):
            raise SasCancel(INVALID_MESSAGE, "the accept has no commitment")
        self.protocols = check_accept(content)
        self._their_commitment = theirs
        return {"key": self.public_key}

    def receive_key(self, content: Mapping[str, Any]) -> dict[str, Any] | None:
        """Their ephemeral key: as acceptor, our key fields to send; as starter, nothing, but
        the key must match the commitment their accept made."""
        key = content.get("key")
        if not isinstance(key, str):
            raise SasCancel(INVALID_MESSAGE, "the key message has no key")
        if self.we_started:
            assert self._start is not None and self._their_commitment is not None
            if not _same_base64(commitment(key, self._start), self._their_commitment):
                raise SasCancel(MISMATCHED_COMMITMENT, "the key does not match the commitment")
        try:
            their_key = vodozemac.Curve25519PublicKey.from_base64(key)
            self._established = self._sas.diffie_hellman(their_key)
        except ValueError:  # KeyException: not a key, or a low-order point
            raise SasCancel(INVALID_MESSAGE, "the ephemeral key is not usable") from None
        self._their_key = key
        return None if self.we_started else {"key": self.public_key}

    def _info(self) -> str:
        assert self._their_key is not None
        ours, theirs = (self.me, self.public_key), (self.other, self._their_key)
        (starter, starter_key), (acceptor, acceptor_key) = (
            (ours, theirs) if self.we_started else (theirs, ours))
        return sas_info(starter, starter_key, acceptor, acceptor_key, self.flow_id)

    def _shared(self) -> vodozemac.EstablishedSas:
        if self._established is None:
            raise RuntimeError("the SAS keys have not been exchanged yet")
        return self._established

    def emoji(self) -> tuple[Emoji, ...]:
        return emoji_for(list(self._shared().bytes(self._info()).emoji_indices))

    def decimals(self) -> tuple[int, int, int]:
        first, second, third = self._shared().bytes(self._info()).decimals
        return (first, second, third)

    def _mac(self, message: str, info: str) -> str:
        assert self.protocols is not None
        if self.protocols.mac == MAC_LEGACY:
            return self._shared().calculate_mac_invalid_base64(message, info).rstrip("=")
        return self._shared().calculate_mac(message, info).rstrip("=")

    def _mac_ok(self, message: str, info: str, tag: Any) -> bool:
        if not isinstance(tag, str):
            return False
        # Both encodings are compared as text: the legacy one is not valid base64 of the MAC.
        return hmac.compare_digest(self._mac(message, info).encode(), tag.rstrip("=").encode())

    def mac_fields(self, device_ed25519: str, master_key: str | None) -> dict[str, Any]:
        """Our MAC message: our device key, our master key if we vouch for it, and KEY_IDS."""
        info = mac_info(self.me, self.other, self.flow_id)
        keys = {f"ed25519:{self.me.device_id}": device_ed25519}
        if master_key is not None:
            keys[f"ed25519:{master_key}"] = master_key
        mac = {key_id: self._mac(key, info + key_id) for key_id, key in keys.items()}
        return {"mac": mac, "keys": self._mac(",".join(sorted(mac)), info + "KEY_IDS")}

    def check_mac(self, content: Mapping[str, Any], device_ed25519: str | None,
                  master_key: str | None) -> VerifiedKeys:
        """Their MAC message against the keys we fixed for them; raises ``SasCancel``."""
        mac = content.get("mac")
        if not isinstance(mac, Mapping) or not all(isinstance(k, str) for k in mac):
            raise SasCancel(INVALID_MESSAGE, "the mac message has no mac object")
        info = mac_info(self.other, self.me, self.flow_id)
        if not self._mac_ok(",".join(sorted(mac)), info + "KEY_IDS", content.get("keys")):
            raise SasCancel(KEY_MISMATCH, "the MAC of the key ids does not match")
        expected = {}
        if device_ed25519 is not None:
            expected[f"ed25519:{self.other.device_id}"] = device_ed25519
        if master_key is not None:
            expected[f"ed25519:{master_key}"] = master_key
        verified = []
        for key_id, tag in mac.items():
            key = expected.get(key_id)
            if key is None:
                continue  # a key we do not know of them proves nothing (rust-sdk skips it too)
            if not self._mac_ok(key, info + key_id, tag):
                raise SasCancel(KEY_MISMATCH, f"the MAC of {key_id} does not match")
            verified.append(key_id)
        if not verified:
            raise SasCancel(KEY_MISMATCH, "the MAC covers none of the keys we know")
        device_id = f"ed25519:{self.other.device_id}"
        return VerifiedKeys(
            self.other.user_id, self.other.device_id,
            device_ed25519 if device_id in verified else None,
            master_key if master_key is not None and f"ed25519:{master_key}" in verified else None,
            tuple(sorted(verified)),
        )
