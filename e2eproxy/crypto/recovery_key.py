"""The Matrix key representation (spec appendices, "Cryptographic key representation").

A 32-byte private key shown to a user (the secret storage key, or the key backup decryption key)
is written as::

    base58_bitcoin(0x8B 0x01 ‖ key(32) ‖ parity)      parity = XOR of every byte before it

in groups of four characters separated by spaces, e.g.
``EsTc LW2K PGiF wKEA 3As5 g5c4 BXwk qeeJ ZJV8 Q9fu gUMN UE4d``. Whitespace is insignificant
when reading one back. Pure functions; error messages never quote the key or its bytes.
"""

from __future__ import annotations

from functools import reduce

import base58

from e2eproxy.errors import E2EProxyError

PREFIX = b"\x8b\x01"
KEY_SIZE = 32
DECODED_SIZE = len(PREFIX) + KEY_SIZE + 1  # prefix, key, parity byte
GROUP_SIZE = 4


class RecoveryKeyError(E2EProxyError):
    """The text is not a valid key in the Matrix key representation; nothing was decoded."""


class NotBase58(RecoveryKeyError):
    """The text holds a character outside the bitcoin base58 alphabet."""


class BadLength(RecoveryKeyError):
    """The text decodes to the wrong number of bytes (a key is 35 bytes with prefix and parity)."""


class BadPrefix(RecoveryKeyError):
    """The decoded bytes do not start with 0x8B 0x01: this is not a Matrix key."""


class BadParity(RecoveryKeyError):
    """The parity byte does not match: a character was mistyped."""


def _parity(data: bytes) -> int:
    return reduce(lambda acc, byte: acc ^ byte, data, 0)


def encode_recovery_key(key: bytes) -> str:
    """The display form of a 32-byte key: base58 in space-separated groups of four."""
    if len(key) != KEY_SIZE:
        raise ValueError(f"a key to encode must be {KEY_SIZE} bytes")
    payload = PREFIX + key
    text = base58.b58encode(payload + bytes([_parity(payload)]), base58.BITCOIN_ALPHABET)
    encoded = text.decode("ascii")
    return " ".join(encoded[i : i + GROUP_SIZE] for i in range(0, len(encoded), GROUP_SIZE))


def decode_recovery_key(text: str) -> bytes:
    """The 32 key bytes of ``text``; raises a ``RecoveryKeyError`` subclass on bad input.

    Checks run in matrix-rust-sdk's order (base58, then length, then prefix, then parity), so a
    typo that also changes the leading bytes reports ``BadPrefix``.
    """
    compact = "".join(text.split())  # any whitespace, as the spec and rust-sdk allow
    try:
        decoded = base58.b58decode(compact.encode("ascii"), base58.BITCOIN_ALPHABET)
    except ValueError:
        # ``from None``: the library's message quotes the offending character of the secret.
        raise NotBase58("the key is not base58 (bitcoin alphabet)") from None
    if len(decoded) != DECODED_SIZE:
        raise BadLength(f"the key decodes to {len(decoded)} bytes, expected {DECODED_SIZE}")
    if decoded[: len(PREFIX)] != PREFIX:
        raise BadPrefix("the key does not start with the Matrix key prefix")
    if _parity(decoded[:-1]) != decoded[-1]:
        raise BadParity("the key's parity byte does not match (mistyped?)")
    return decoded[len(PREFIX) : -1]
