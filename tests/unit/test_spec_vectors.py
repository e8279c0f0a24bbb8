"""The Matrix spec appendix vectors: unpadded base64, canonical JSON and JSON signing."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from e2eproxy.protocol.canonical import (
    b64decode,
    b64encode,
    canonical_json,
    sign_json,
    verify_json,
)

SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"

CANONICAL = [
    ("{}", "{}"),
    ('{"one": 1, "two": "Two"}', '{"one":1,"two":"Two"}'),
    ('{"b": "2", "a": "1"}', '{"a":"1","b":"2"}'),
    ('{"b":"2","a":"1"}', '{"a":"1","b":"2"}'),
    (
        '{"auth": {"success": true, "mxid": "@john.doe:example.com", "profile": {'
        '"display_name": "John Doe", "three_pids": [{"medium": "email", "address": '
        '"john.doe@example.org"}, {"medium": "msisdn", "address": "123456789"}]}}}',
        '{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe",'
        '"three_pids":[{"address":"john.doe@example.org","medium":"email"},'
        '{"address":"123456789","medium":"msisdn"}]},"success":true}}',
    ),
    ('{"a": "日本語"}', '{"a":"日本語"}'),
    ('{"本": 2, "日": 1}', '{"日":1,"本":2}'),
    ('{"a": "\\u65E5"}', '{"a":"日"}'),
    ('{"a": null}', '{"a":null}'),
]


@pytest.mark.parametrize(("given", "expected"), CANONICAL)
def test_canonical_json_examples(given: str, expected: str) -> None:
    assert canonical_json(json.loads(given)) == expected.encode("utf-8")


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [(b"", ""), (b"f", "Zg"), (b"fo", "Zm8"), (b"foo", "Zm9v"), (b"foob", "Zm9vYg"),
     (b"fooba", "Zm9vYmE"), (b"foobar", "Zm9vYmFy")],
)
def test_unpadded_base64(raw: bytes, encoded: str) -> None:
    assert b64encode(raw) == encoded
    assert b64decode(encoded) == raw
    assert b64decode(encoded + "=" * (-len(encoded) % 4)) == raw


def test_bad_base64_raises_value_error() -> None:
    with pytest.raises(ValueError):
        b64decode("not base64!")


def _signer() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.from_private_bytes(b64decode(SEED))
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return key, b64encode(public)


@pytest.mark.parametrize(
    ("value", "signature"),
    [
        (
            {},
            "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ",
        ),
        (
            {"one": 1, "two": "Two"},
            "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw",
        ),
    ],
)
def test_json_signing_vectors(value: dict[str, object], signature: str) -> None:
    key, public = _signer()
    signed = sign_json(value, "domain", "ed25519:1", lambda m: b64encode(key.sign(m)))
    assert signed["signatures"] == {"domain": {"ed25519:1": signature}}
    assert {k: v for k, v in signed.items() if k != "signatures"} == value
    assert verify_json(signed, "domain", "ed25519:1", public)
    # unsigned is not covered; any change to the signed part is
    assert verify_json({**signed, "unsigned": {"age": 5}}, "domain", "ed25519:1", public)
    assert not verify_json({**signed, "extra": 1}, "domain", "ed25519:1", public)
    assert not verify_json(signed, "domain", "ed25519:2", public)
    assert not verify_json(signed, "domain", "ed25519:1", "garbage")
