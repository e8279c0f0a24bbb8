"""Matrix error JSON, raised from anywhere in the stub and rendered by one middleware."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class MatrixError(Exception):
    """An error the client-server API reports as ``{"errcode": ..., "error": ...}``."""

    def __init__(self, status: int, errcode: str, error: str, **extra: Any) -> None:
        super().__init__(f"{status} {errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"errcode": self.errcode, "error": self.error, **self.extra}

    def response(self) -> web.Response:
        return error_response(self.status, self.errcode, self.error, **self.extra)


def error_response(status: int, errcode: str, error: str, **extra: Any) -> web.Response:
    headers = {}
    if status == 429 and "retry_after_ms" in extra:
        headers["Retry-After"] = str(max(1, -(-int(extra["retry_after_ms"]) // 1000)))
    return web.json_response(
        {"errcode": errcode, "error": error, **extra}, status=status, headers=headers
    )


def forbidden(error: str = "Forbidden") -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", error)


def not_found(error: str = "Not found") -> MatrixError:
    return MatrixError(404, "M_NOT_FOUND", error)


def bad_json(error: str = "Content not JSON.") -> MatrixError:
    return MatrixError(400, "M_NOT_JSON", error)


def invalid_param(error: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", error)


def missing_param(error: str) -> MatrixError:
    return MatrixError(400, "M_MISSING_PARAM", error)


def bad_json_field(error: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", error)


UNRECOGNIZED = MatrixError(404, "M_UNRECOGNIZED", "Unrecognized request")
