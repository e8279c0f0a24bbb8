"""The exception tree. Only the proxy's middleware turns these into HTTP responses."""

from __future__ import annotations

from typing import Any


class E2EProxyError(Exception):
    """Root of every error e2eproxy raises on purpose."""


class ConfigError(E2EProxyError):
    """A config file or flag is wrong; the message names the file, the key and the problem."""


class StoreError(E2EProxyError):
    """The local store cannot be used."""


class WrongPassphrase(StoreError):
    """The store passphrase (or keyring key) does not unlock the store's data key."""


class StoreCorrupt(StoreError):
    """A stored value failed its integrity check or cannot be parsed."""


class MigrationError(StoreError):
    """The store schema cannot be migrated (for example it is newer than this program)."""


class StoreLocked(StoreError):
    """Another e2eproxy process holds the lease on this account."""


class ProtocolError(E2EProxyError):
    """A Matrix protocol rule was broken."""


class LocalProtocolError(ProtocolError):
    """We misused something: a bug or an unsupported call order on our side."""




class UpstreamError(E2EProxyError):
    """The homeserver could not be reached or answered with a failure."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class MatrixError(E2EProxyError):
    """An error the client must see, as Matrix error JSON."""

    def __init__(self, status: int, errcode: str, message: str, **extra: Any) -> None:
        super().__init__(f"{status} {errcode}: {message}")
        self.status = status
        self.errcode = errcode
        self.message = message
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        return {"errcode": self.errcode, "error": self.message, **self.extra}
