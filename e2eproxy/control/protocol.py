"""The control protocol: one JSON object a line, each way, over the control socket.

A request is ``{"id": int, "cmd": str, "user": str|null, "device": str|null, "args": {...}}``;
its answer carries the same id and is ``{"id": int, "ok": true, "result": <json>}`` or
``{"id": int, "ok": false, "error": {"code": str, "message": str}}``. A line the server cannot
read at all is answered with ``"id": null``. Lines are bounded (MAX_LINE) and parsed strictly:
anything of the wrong shape is the error "bad_request", never a guess.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2eproxy.errors import ConfigError, E2EProxyError

# A request line, newline included. Responses may be longer (a long device list).
MAX_LINE = 1024 * 1024
MAX_ANSWER_LINE = 64 * MAX_LINE
SOCKET_NAME = "control.sock"
# sun_path holds 108 bytes on Linux (104 on the BSDs), its terminating NUL included.
MAX_SOCKET_PATH = 107
MAX_ID = 2**53
MAX_CMD = 100
REQUEST_KEYS = frozenset({"id", "cmd", "user", "device", "args"})
ANSWER_KEYS = (frozenset({"id", "ok", "result"}), frozenset({"id", "ok", "error"}))


class ErrorCode(enum.StrEnum):
    """The codes this package gives; command handlers may add their own (any string)."""

    BAD_REQUEST = "bad_request"
    UNKNOWN_COMMAND = "unknown_command"
    INTERNAL = "internal"
    STOPPING = "stopping"
    NOT_RUNNING = "not_running"
    ALREADY_RUNNING = "already_running"
    CANNOT_LISTEN = "cannot_listen"
    NO_ACCOUNT = "no_account"
    AMBIGUOUS_ACCOUNT = "ambiguous_account"
    BAD_RESPONSE = "bad_response"
    TIMEOUT = "timeout"
    CONNECTION_LOST = "connection_lost"
    CONNECTION_FAILED = "connection_failed"
    PERMISSION_DENIED = "permission_denied"


class ControlError(E2EProxyError):
    """An error answer: `code` is for programs, `message` (also str(self)) for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class BadRequest(ControlError):
    """A request line of the wrong shape; `request_id` when it was readable."""

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(ErrorCode.BAD_REQUEST, message)
        self.request_id = request_id


@dataclass(frozen=True)
class ControlRequest:
    """One command for a handler. `args` may carry a password: it is kept out of repr."""

    cmd: str
    user: str | None = None
    device: str | None = None
    args: Mapping[str, Any] = field(default_factory=dict, repr=False)


# What serves one command: its result must be plain JSON data (dicts, lists, str, int, ...).
Handler = Callable[[ControlRequest], Awaitable[Any]]


@dataclass(frozen=True)
class Response:
    request_id: int | None
    result: Any = None
    error: ControlError | None = None


def socket_path(data_dir: Path) -> Path:
    """The control socket of the process serving `data_dir`, checked against the OS limit."""
    path = data_dir / SOCKET_NAME
    check_socket_path(path)
    return path


def check_socket_path(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigError(
            f"the control socket path {path} is longer than the {MAX_SOCKET_PATH} bytes a Unix "
            "socket path may have: choose a shorter data dir (--data-dir, store.data_dir)"
        )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a key appears twice")
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _load(line: bytes) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN or Infinity. ValueError otherwise."""
    return json.loads(
        line.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant
    )


def _dump(value: Any) -> bytes:
    # Compact and on one line: json.dumps escapes every newline inside strings.
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_ID


def encode_request(request_id: int, request: ControlRequest) -> bytes:
    return _dump({
        "id": request_id,
        "cmd": request.cmd,
        "user": request.user,
        "device": request.device,
        "args": dict(request.args),
    })


def parse_request(line: bytes) -> tuple[int, ControlRequest]:
    """The id and request of one line; BadRequest for anything else."""
    if len(line) > MAX_LINE:
        raise BadRequest(f"a request line is at most {MAX_LINE} bytes")
    try:
        data = _load(line)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise BadRequest(f"not a JSON line: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("a request is a JSON object")
    request_id = data.get("id")
    if not _is_id(request_id):
        raise BadRequest('"id" must be a non-negative integer')
    assert isinstance(request_id, int)
    unknown = sorted(set(data) - REQUEST_KEYS)
    if unknown:
        raise BadRequest(f"unknown keys: {', '.join(unknown)}", request_id)
    cmd, args = data.get("cmd"), data.get("args", {})
    if not isinstance(cmd, str) or not 0 < len(cmd) <= MAX_CMD:
        raise BadRequest(f'"cmd" must be a string of 1 to {MAX_CMD} characters', request_id)
    for key in ("user", "device"):
        if not isinstance(data.get(key), str | None):
            raise BadRequest(f'"{key}" must be a string or null', request_id)
    if not isinstance(args, dict):
        raise BadRequest('"args" must be an object', request_id)
    return request_id, ControlRequest(cmd, data.get("user"), data.get("device"), args)


def encode_result(request_id: int | None, result: Any) -> bytes:
    """TypeError or ValueError when `result` is not plain JSON data."""
    return _dump({"id": request_id, "ok": True, "result": result})


def encode_error(request_id: int | None, error: ControlError) -> bytes:
    return _dump({
        "id": request_id,
        "ok": False,
        "error": {"code": str(error.code), "message": error.message},
    })


def _bad_response(why: str) -> ControlError:
    return ControlError(ErrorCode.BAD_RESPONSE, f"e2eproxy answered something unreadable: {why}")


def parse_response(line: bytes) -> Response:
    """One answer line; ControlError "bad_response" when it is not one."""
    try:
        data = _load(line)
    except ValueError as exc:
        raise _bad_response(str(exc)) from None
    if not isinstance(data, dict) or set(data) not in ANSWER_KEYS:
        raise _bad_response("not an answer object")
    request_id = data["id"]
    if request_id is not None and not _is_id(request_id):
        raise _bad_response("a bad id")
    if data["ok"] is True and "result" in data:
        return Response(request_id, result=data["result"])
    error = data.get("error")
    if data["ok"] is not False or not isinstance(error, Mapping) or set(error) != {
        "code", "message"
    }:
        raise _bad_response("a bad error object")
    code, message = error["code"], error["message"]
    if not isinstance(code, str) or not isinstance(message, str):
        raise _bad_response("a bad error object")
    return Response(request_id, error=ControlError(code, message))
