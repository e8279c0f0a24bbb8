"""SAS math against vectors and an independent spec implementation (cryptography + hashlib).

The reference peer below follows the spec's text and rust-sdk's ``helpers.rs`` format strings
(``extra_info_sas``, ``extra_mac_info_send``/``_receive``) with its own X25519, HKDF and HMAC,
so a drift in our info strings, bit slicing or MAC encoding shows up as a mismatch here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from e2eproxy.crypto.verification import events as ev
from e2eproxy.crypto.verification.emoji import SAS_EMOJI, emoji_for
from e2eproxy.crypto.verification.sas import (
    MAC_LEGACY,
    MAC_MSC3783,
    MAC_V2,
    Party,
    SasCancel,
    SasExchange,
    check_accept,
    choose_protocols,
    commitment,
    mac_info,
    sas_info,
    start_fields,
)
from e2eproxy.protocol.canonical import canonical_json

# matrix-rust-sdk crates/matrix-sdk-crypto/src/verification/sas/helpers.rs, commitment_calculation.
RUST_COMMITMENT = "CCQmB4JCdB0FW21FdAnHj/Hu8+W9+Nb0vgwPEnZZQ4g"
RUST_PUBLIC_KEY = "Q/NmNFEUS1fS+YeEmiZkjjblKTitrKOAk7cPEumcMlg"
RUST_START = {
    "from_device": "XOWLHHFSWM",
    "transaction_id": "bYxBsirjUJO9osar6ST4i2M2NjrYLA7l",
    "method": "m.sas.v1",
    "key_agreement_protocols": ["curve25519-hkdf-sha256", "curve25519"],
    "hashes": ["sha256"],
    "message_authentication_codes": ["hkdf-hmac-sha256", "hmac-sha256"],
    "short_authentication_string": ["decimal", "emoji"],
}
# SHA-256 over "symbol|description\n" of the 64 entries of matrix-spec
# data-definitions/sas-emoji.json (d0ba2aae); rust-sdk's emoji_from_index is the same table.
SPEC_TABLE_DIGEST = "30b7ecfd48ae6588405682141127cdce3fb89011bcb7ea5a2ff8f7a1c88b4d07"

ALICE, ADEV = "@alice:example.org", "ALICEDEVICE"
BOB, BDEV = "@bob:example.org", "BOBDEVICE"
FLOW = "$requestEventId:example.org"


def test_rust_sdk_commitment_vector() -> None:
    assert commitment(RUST_PUBLIC_KEY, RUST_START) == RUST_COMMITMENT


def test_commitment_is_key_then_canonical_json() -> None:
    expected = hashlib.sha256(RUST_PUBLIC_KEY.encode() + canonical_json(RUST_START)).digest()
    assert commitment(RUST_PUBLIC_KEY, RUST_START) == _b64(expected)
    # Any change to the start content (a downgraded method list) changes the commitment.
    tampered = dict(RUST_START, message_authentication_codes=["hkdf-hmac-sha256"])
    assert commitment(RUST_PUBLIC_KEY, tampered) != RUST_COMMITMENT


def test_emoji_table_is_the_specs() -> None:
    assert len(SAS_EMOJI) == 64
    text = "".join(f"{e.symbol}|{e.description}\n" for e in SAS_EMOJI)
    assert hashlib.sha256(text.encode()).hexdigest() == SPEC_TABLE_DIGEST
    spots = {0: ("🐶", "Dog"), 17: ("🌵", "Cactus"), 36: ("👍", "Thumbs Up"),
             37: ("☂️", "Umbrella"), 49: ("☎️", "Telephone"), 63: ("📌", "Pin")}
    for index, (symbol, name) in spots.items():
        assert (SAS_EMOJI[index].symbol, SAS_EMOJI[index].description) == (symbol, name)
    assert [e.description for e in emoji_for(b"\x00\x3f")] == ["Dog", "Pin"]


def test_info_strings_match_rust_sdk_formats() -> None:
    alice, bob = Party(ALICE, ADEV), Party(BOB, BDEV)
    # extra_info_sas: "MATRIX_KEY_VERIFICATION_SAS|{first_info}|{second_info}|{flow_id}" with
    # each info "{user}|{device}|{key}", the starter first.
    assert sas_info(alice, "KA", bob, "KB", FLOW) == (
        f"MATRIX_KEY_VERIFICATION_SAS|{ALICE}|{ADEV}|KA|{BOB}|{BDEV}|KB|{FLOW}")
    # extra_mac_info_send / _receive: sender user, sender device, receiver user, device, flow.
    expected = f"MATRIX_KEY_VERIFICATION_MAC{ALICE}{ADEV}{BOB}{BDEV}{FLOW}"
    assert mac_info(alice, bob, FLOW) == expected


# --- protocol choice -----------------------------------------------------------------------


def test_choose_prefers_v2_and_keeps_common_sas_methods() -> None:
    start = start_fields("D")
    assert choose_protocols(start).mac == MAC_V2
    assert choose_protocols(dict(start, message_authentication_codes=[MAC_MSC3783])).mac == (
        MAC_MSC3783)
    assert choose_protocols(dict(start, message_authentication_codes=[MAC_LEGACY])).mac == (
        MAC_LEGACY)
    assert choose_protocols(dict(start, short_authentication_string=["emoji", "x"])).sas == (
        "emoji",)


@pytest.mark.parametrize("change", [
    {"method": "m.reciprocate.v1"},
    {"key_agreement_protocols": ["curve25519"]},
    {"hashes": ["sha512"]},
    {"message_authentication_codes": ["hmac-sha256"]},
    {"short_authentication_string": ["words"]},
])
def test_choose_refuses_what_we_cannot_do(change: dict[str, Any]) -> None:
    with pytest.raises(SasCancel) as caught:
        choose_protocols(dict(start_fields("D"), **change))
    assert caught.value.code == ev.UNKNOWN_METHOD


def test_malformed_start_is_an_invalid_message() -> None:
    with pytest.raises(SasCancel) as caught:
        choose_protocols(dict(start_fields("D"), hashes="sha256"))
    assert caught.value.code == ev.INVALID_MESSAGE


@pytest.mark.parametrize("change", [
    {"message_authentication_code": MAC_MSC3783},  # we did not offer it
    {"hash": "sha512"},
    {"key_agreement_protocol": "curve25519"},
    {"short_authentication_string": ["words"]},
])
def test_accept_must_choose_what_we_offered(change: dict[str, Any]) -> None:
    accept = {"key_agreement_protocol": "curve25519-hkdf-sha256", "hash": "sha256",
              "message_authentication_code": MAC_V2, "short_authentication_string": ["emoji"]}
    assert check_accept(accept).mac == MAC_V2
    with pytest.raises(SasCancel) as caught:
        check_accept(dict(accept, **change))
    assert caught.value.code == ev.UNKNOWN_METHOD


# --- against a reference implementation of the spec ----------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _hkdf(secret: bytes, info: str, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt=None, info=info.encode()).derive(secret)


def _spec_emoji(data: bytes) -> list[int]:
    bits = int.from_bytes(data[:6], "big")
    return [(bits >> (42 - 6 * i)) & 0x3F for i in range(7)]


def _spec_decimals(b: bytes) -> tuple[int, int, int]:
    return ((b[0] << 5 | b[1] >> 3) + 1000,
            ((b[1] & 0x7) << 10 | b[2] << 2 | b[3] >> 6) + 1000,
            ((b[3] & 0x3F) << 7 | b[4] >> 1) + 1000)


def _spec_mac(secret: bytes, info: str, message: str) -> str:
    return _b64(hmac.new(_hkdf(secret, info, 32), message.encode(), hashlib.sha256).digest())


class ReferencePeer:
    """Bob's side of SAS written from the spec, sharing no code with the module under test."""

    def __init__(self) -> None:
        self.private = X25519PrivateKey.generate()
        self.public = _b64(self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def shared(self, their_public: str) -> bytes:
        raw = base64.b64decode(their_public + "=" * (-len(their_public) % 4))
        return self.private.exchange(X25519PublicKey.from_public_bytes(raw))


@pytest.mark.parametrize("we_start", [True, False])
def test_sas_and_macs_match_a_spec_reference_peer(we_start: bool) -> None:
    ours, peer = SasExchange(Party(ALICE, ADEV), Party(BOB, BDEV), FLOW), ReferencePeer()
    relation = {"m.relates_to": {"rel_type": "m.reference", "event_id": FLOW}}
    if we_start:
        start = dict(start_fields(ADEV), **relation)
        ours.we_start(start)
        hashed = hashlib.sha256(peer.public.encode() + canonical_json(start)).digest()
        peer_commitment = _b64(hashed)
        accept = {"key_agreement_protocol": "curve25519-hkdf-sha256", "hash": "sha256",
                  "message_authentication_code": MAC_V2,
                  "short_authentication_string": ["decimal", "emoji"],
                  "commitment": peer_commitment, **relation}
        assert ours.receive_accept(accept) == {"key": ours.public_key}
        assert ours.receive_key({"key": peer.public, **relation}) is None
        starter, acceptor = (ALICE, ADEV, ours.public_key), (BOB, BDEV, peer.public)
    else:
        start = dict(start_fields(BDEV), **relation)
        accept = ours.receive_start(start)
        assert accept["commitment"] == _b64(
            hashlib.sha256(ours.public_key.encode() + canonical_json(start)).digest())
        assert ours.receive_key({"key": peer.public, **relation}) == {"key": ours.public_key}
        starter, acceptor = (BOB, BDEV, peer.public), (ALICE, ADEV, ours.public_key)

    secret = peer.shared(ours.public_key)
    info = "MATRIX_KEY_VERIFICATION_SAS|{}|{}|{}|{}|{}|{}|{}".format(*starter, *acceptor, FLOW)
    assert [e.description for e in ours.emoji()] == [
        SAS_EMOJI[i].description for i in _spec_emoji(_hkdf(secret, info, 6))]
    assert ours.decimals() == _spec_decimals(_hkdf(secret, info, 5))

    alice_ed, alice_master = "AliceDeviceEd25519Key", "AliceMasterKey"
    sent = ours.mac_fields(alice_ed, alice_master)
    send_info = f"MATRIX_KEY_VERIFICATION_MAC{ALICE}{ADEV}{BOB}{BDEV}{FLOW}"
    assert sent["mac"] == {
        f"ed25519:{ADEV}": _spec_mac(secret, f"{send_info}ed25519:{ADEV}", alice_ed),
        f"ed25519:{alice_master}": _spec_mac(secret, f"{send_info}ed25519:{alice_master}",
                                             alice_master),
    }
    key_ids = ",".join(sorted([f"ed25519:{ADEV}", f"ed25519:{alice_master}"]))
    assert sent["keys"] == _spec_mac(secret, f"{send_info}KEY_IDS", key_ids)

    bob_ed, bob_master = "BobDeviceEd25519Key", "BobMasterKey"
    recv_info = f"MATRIX_KEY_VERIFICATION_MAC{BOB}{BDEV}{ALICE}{ADEV}{FLOW}"
    macs = {f"ed25519:{BDEV}": _spec_mac(secret, f"{recv_info}ed25519:{BDEV}", bob_ed),
            f"ed25519:{bob_master}": _spec_mac(secret, f"{recv_info}ed25519:{bob_master}",
                                               bob_master)}
    theirs = {"mac": macs, "keys": _spec_mac(secret, f"{recv_info}KEY_IDS", ",".join(sorted(macs)))}
    verified = ours.check_mac(theirs, bob_ed, bob_master)
    assert (verified.device_ed25519, verified.master_key) == (bob_ed, bob_master)
    # The same MACs checked against other keys than Bob's fail.
    with pytest.raises(SasCancel) as caught:
        ours.check_mac(theirs, "SomeoneElsesKey", bob_master)
    assert caught.value.code == ev.KEY_MISMATCH


def test_a_key_that_does_not_match_the_commitment_is_refused() -> None:
    ours, peer, other = SasExchange(Party(ALICE, ADEV), Party(BOB, BDEV), FLOW), (
        ReferencePeer()), ReferencePeer()
    start = dict(start_fields(ADEV), transaction_id=FLOW)
    ours.we_start(start)
    committed = _b64(hashlib.sha256(peer.public.encode() + canonical_json(start)).digest())
    ours.receive_accept({"key_agreement_protocol": "curve25519-hkdf-sha256", "hash": "sha256",
                         "message_authentication_code": MAC_V2,
                         "short_authentication_string": ["emoji"], "commitment": committed})
    with pytest.raises(SasCancel) as caught:
        ours.receive_key({"key": other.public})
    assert caught.value.code == ev.MISMATCHED_COMMITMENT


@pytest.mark.parametrize("key", ["not base64!", _b64(bytes(32)), 5])
def test_unusable_ephemeral_keys_are_invalid_messages(key: Any) -> None:
    ours = SasExchange(Party(ALICE, ADEV), Party(BOB, BDEV), FLOW)
    ours.receive_start(dict(start_fields(BDEV), transaction_id=FLOW))
    with pytest.raises(SasCancel) as caught:
        ours.receive_key({"key": key})
    assert caught.value.code == ev.INVALID_MESSAGE
