"""The exception tree. Only the proxy's middleware turns these into HTTP responses."""

from __future__ import annotations

import enum
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


class Errcode(enum.StrEnum):
    """The Matrix error codes the proxy sends or reads in a homeserver's answer."""

    UNKNOWN = "M_UNKNOWN"
    UNRECOGNIZED = "M_UNRECOGNIZED"
    FORBIDDEN = "M_FORBIDDEN"
    MISSING_TOKEN = "M_MISSING_TOKEN"
    UNKNOWN_TOKEN = "M_UNKNOWN_TOKEN"
    NOT_JSON = "M_NOT_JSON"
    BAD_JSON = "M_BAD_JSON"
    NOT_FOUND = "M_NOT_FOUND"
    TOO_LARGE = "M_TOO_LARGE"
    CANNOT_OVERWRITE_MEDIA = "M_CANNOT_OVERWRITE_MEDIA"


class MatrixError(E2EProxyError):
    """An error the client must see, as Matrix error JSON.

    Each subclass below fixes its errcode and usual HTTP status; raise the one that says what
    went wrong where it is known, and the middleware turns it into the response. ``status``
    overrides the usual one (a 404 M_UNRECOGNIZED, say); ``MatrixError`` itself, with an
    ``errcode``, passes on an error the homeserver gave.
    """

    default_status = 500
    default_errcode: str = Errcode.UNKNOWN

    def __init__(self, message: str, *, status: int | None = None, errcode: str | None = None,
                 **extra: Any) -> None:
        self.status = status if status is not None else self.default_status
        self.errcode = errcode if errcode is not None else self.default_errcode
        self.message = message
        self.extra = extra
        super().__init__(f"{self.status} {self.errcode}: {message}")

    def to_json(self) -> dict[str, Any]:
        return {"errcode": self.errcode, "error": self.message, **self.extra}


class BadRequest(MatrixError):
    """The request cannot be done as asked (400 M_UNKNOWN)."""

    default_status = 400


class Unrecognized(MatrixError):
    """Not a request the proxy serves in this form (400 M_UNRECOGNIZED)."""

    default_status = 400
    default_errcode = Errcode.UNRECOGNIZED


class Forbidden(MatrixError):
    default_status = 403
    default_errcode = Errcode.FORBIDDEN


class MissingToken(MatrixError):
    default_status = 401
    default_errcode = Errcode.MISSING_TOKEN


class NotJson(MatrixError):
    default_status = 400
    default_errcode = Errcode.NOT_JSON


class BadJson(MatrixError):
    default_status = 400
    default_errcode = Errcode.BAD_JSON


class NotFound(MatrixError):
    default_status = 404
    default_errcode = Errcode.NOT_FOUND


class TooLarge(MatrixError):
    default_status = 413
    default_errcode = Errcode.TOO_LARGE


class CannotOverwriteMedia(MatrixError):
    default_status = 409
    default_errcode = Errcode.CANNOT_OVERWRITE_MEDIA


class Conflict(MatrixError):
    """The state changed under the request; nothing was done (409 M_UNKNOWN)."""

    default_status = 409


class HomeserverFailed(MatrixError):
    """The homeserver failed a request the proxy needed, or answered nonsense (502)."""

    default_status = 502


class Unavailable(MatrixError):
    """The proxy cannot serve this right now; the client may retry (503)."""

    default_status = 503


class InternalError(MatrixError):
    default_status = 500


def homeserver_error(status: int, body: Any, fallback: str) -> MatrixError:
    """The homeserver's own error for the client when it gave one, else a 502 saying
    ``fallback``."""
    if isinstance(body, dict) and isinstance(body.get("errcode"), str):
        return MatrixError(str(body.get("error", fallback)), status=status,
                           errcode=body["errcode"])
    return HomeserverFailed(fallback)


def token_refused(status: int, body: Any) -> bool:
    """The homeserver says the access token is dead (logged out, expired, replaced)."""
    return status == 401 and isinstance(body, dict) and body.get("errcode") == Errcode.UNKNOWN_TOKEN
