"""Encrypted attachments: the spec's scheme, checked against matrix-rust-sdk's real vector."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from e2eproxy.protocol.attachments import (
    AttachmentError,
    Decryptor,
    Encryptor,
    decrypt_bytes,
    parse_encrypted_file,
)

# matrix-rust-sdk crates/matrix-sdk-crypto/src/file_encryption/attachments.rs, test real_decrypt.
EXAMPLE_DATA = bytes(
    [
        179,
        154,
        118,
        127,
        186,
        127,
        110,
        33,
        203,
        33,
        33,
        134,
        67,
        100,
        173,
        46,
        235,
        27,
        215,
        172,
        36,
        26,
        75,
        47,
        33,
        160,
    ]
)
EXAMPLE_FILE: dict[str, Any] = {
    "url": "mxc://example.org/abc",
    "v": "v2",
    "key": {
        "kty": "oct",
        "alg": "A256CTR",
        "ext": True,
        "k": "Voq2nkPme_x8no5-Tjq_laDAdxE6iDbxnlQXxwFPgE4",
        "key_ops": ["encrypt", "decrypt"],
    },
    "iv": "i0DovxYdJEcAAAAAAAAAAA",
    "hashes": {"sha256": "ANdt819a8bZl4jKy3Z+jcqtiNICa2y0AW4BBJ/iQRAU"},
}


def test_real_vector_decrypts() -> None:
    _, key = parse_encrypted_file(EXAMPLE_FILE)
    assert decrypt_bytes(EXAMPLE_DATA, key) == b"It's a secret to everybody"


def test_tampered_ciphertext_is_refused() -> None:
    _, key = parse_encrypted_file(EXAMPLE_FILE)
    tampered = bytes([EXAMPLE_DATA[0] ^ 1]) + EXAMPLE_DATA[1:]
    with pytest.raises(AttachmentError, match="sha256"):
        decrypt_bytes(tampered, key)
    with pytest.raises(AttachmentError, match="sha256"):
        decrypt_bytes(EXAMPLE_DATA[:-1], key)  # truncated


def test_round_trip_in_chunks_with_fresh_key_and_zero_counter() -> None:
    data = bytes(range(256)) * 1000
    encryptor = Encryptor()
    ciphertext = b"".join(encryptor.update(data[i : i + 4096]) for i in range(0, len(data), 4096))
    key = encryptor.finish()
    assert ciphertext != data and len(ciphertext) == len(data)
    assert key.iv[8:] == bytes(8)
    assert key.sha256 == hashlib.sha256(ciphertext).digest()
    file = key.to_json("mxc://s/m")
    assert file["v"] == "v2" and file["key"]["alg"] == "A256CTR"
    assert "=" not in file["iv"] and "=" not in file["key"]["k"]
    url, parsed = parse_encrypted_file(file)
    assert url == "mxc://s/m" and parsed == key
    decryptor = Decryptor(parsed)
    assert (
        b"".join(decryptor.update(ciphertext[i : i + 999]) for i in range(0, len(ciphertext), 999))
        == data
    )
    other = Encryptor()
    other.update(b"x")
    assert other.finish().key != key.key


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": "v1"}, "unsupported encrypted file version"),
        ({"v": None}, "unsupported encrypted file version"),
        ({"url": "https://example.org/x"}, "no mxc:// url"),
        ({"key": {"kty": "oct", "alg": "A128CTR", "k": "AAAA"}}, "A256CTR"),
        ({"key": {**EXAMPLE_FILE["key"], "k": "AAAAAAAAAAAAAAAAAAAAAA"}}, "not 32 bytes"),
        ({"key": {**EXAMPLE_FILE["key"], "k": 5}}, "not a string"),
        ({"iv": "!!!"}, "not valid base64"),
        ({"iv": base64.b64encode(bytes(8)).decode()}, "iv is not 16 bytes"),
        ({"hashes": {}}, "sha256 hash is missing"),
        ({"hashes": {"sha256": "AAAA"}}, "not 32 bytes"),
    ],
)
def test_bad_descriptions_are_clear_errors(change: dict[str, Any], message: str) -> None:
    with pytest.raises(AttachmentError, match=message):
        parse_encrypted_file({**EXAMPLE_FILE, **change})


def test_not_an_object() -> None:
    with pytest.raises(AttachmentError, match="not an object"):
        parse_encrypted_file("mxc://x/y")
