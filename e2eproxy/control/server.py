"""The control socket: a Unix socket in the data dir, 0600, answering JSON lines.

The socket's permissions are the authentication: only its owner (and root) can connect, so
there is no TCP listener and no token. One connection may send several requests; each runs in
a task of its own (a long verification never blocks anyone) and the answers go back in the
order of the requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from e2eproxy.control.protocol import (
    MAX_LINE,
    BadRequest,
    ControlError,
    ControlRequest,
    ErrorCode,
    Handler,
    check_socket_path,
    encode_error,
    encode_result,
    parse_request,
)
from e2eproxy.log import REDACTED

log = logging.getLogger(__name__)

__all__ = ["ControlServer", "Handler"]

# Answers a connection may have pending before we stop reading its requests.
MAX_IN_FLIGHT = 32
# At close, running commands get this long to finish before they are cancelled.
CLOSE_GRACE_S = 5.0
# args under these keys are secrets: their values never reach the log, not even inside a
# traceback's exception message.
SECRET_ARGS = frozenset({"password", "passphrase", "recovery_key", "secret", "key", "token"})
INTERNAL_MESSAGE = "the command failed inside e2eproxy; its log says why"
STOPPING_MESSAGE = "e2eproxy is stopping; the command was interrupted"

Pending = asyncio.Queue[tuple[int | None, "asyncio.Future[bytes]"] | None]


class ControlServer:
    """Serves `handlers` (command name -> async handler) on the Unix socket at `path`.

    The table is read at each request, so a dict filled after start() is seen.
    """

    def __init__(
        self, path: Path, handlers: Mapping[str, Handler], *, grace_s: float = CLOSE_GRACE_S
    ) -> None:
        self.path = path
        self.handlers = handlers
        self.grace_s = grace_s
        self._server: asyncio.Server | None = None
        self._identity: tuple[int, int] | None = None
        self._closing = False
        self._connections: set[asyncio.Task[Any]] = set()
        self._readers: set[asyncio.Task[None]] = set()
        self._running: set[asyncio.Task[bytes]] = set()

    async def start(self) -> None:
        check_socket_path(self.path)
        await _clear_stale(self.path)
        sock = _bind_private(self.path)
        info = os.stat(self.path)
        self._identity = (info.st_dev, info.st_ino)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, sock=sock, limit=MAX_LINE + 1
            )
        except BaseException:
            sock.close()
            self._unlink_ours()
            raise
        log.info("Control socket at %s", self.path)

    async def close(self) -> None:
        """Stop accepting and reading, let running commands finish (for a while) and their
        answers go out, then drop every connection and remove the socket file if still ours."""
        if self._server is None:
            return
        self._closing = True
        self._server.close()
        for reading in self._readers:
            reading.cancel()
        await _finish(self._running, self.grace_s)
        await _finish(self._connections, self.grace_s)
        await self._server.wait_closed()
        self._server = None
        self._unlink_ours()

    def _unlink_ours(self) -> None:
        # Another process may have replaced a socket it found stale: that one is not ours.
        with contextlib.suppress(OSError):
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                self.path.unlink()

    # -- one connection ------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        if me is None or self._closing:
            writer.close()
            return
        self._connections.add(me)
        pending: Pending = asyncio.Queue(MAX_IN_FLIGHT)
        sender = asyncio.create_task(_send_in_order(pending, writer), name="control answers")
        reading = asyncio.create_task(self._read_requests(reader, pending), name="control reads")
        self._readers.add(reading)
        try:
            await asyncio.wait({reading})  # close() cancels it: no more requests, answers go on
            if not reading.cancelled() and reading.exception() is not None:
                log.error("Control connection failed", exc_info=reading.exception())
            await pending.put(None)
            await sender
        except asyncio.CancelledError:
            pass  # close() gave up waiting for this client; asyncio need not report it
        finally:
            reading.cancel()
            sender.cancel()
            writer.close()
            self._readers.discard(reading)
            self._connections.discard(me)

    async def _read_requests(self, reader: asyncio.StreamReader, pending: Pending) -> None:
        """Queue an answer (running or ready) per request line, until the end of the stream."""
        while (line := await _next_line(reader)) is not None:
            if isinstance(line, BadRequest):
                await pending.put(_ready(None, line))
                continue
            if not line.strip():
                continue
            try:
                request_id, request = parse_request(line)
            except BadRequest as exc:
                await pending.put(_ready(exc.request_id, exc))
                continue
            task = asyncio.create_task(self._answer(request_id, request), name="control command")
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            await pending.put((request_id, task))

    async def _answer(self, request_id: int, request: ControlRequest) -> bytes:
        handler = self.handlers.get(request.cmd)
        if handler is None:
            error = ControlError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {request.cmd!r}")
            return encode_error(request_id, error)
        try:
            return encode_result(request_id, await handler(request))
        except ControlError as exc:
            return encode_error(request_id, exc)
        except Exception:
            _log_failure(request)
            return encode_error(request_id, ControlError(ErrorCode.INTERNAL, INTERNAL_MESSAGE))


async def _next_line(reader: asyncio.StreamReader) -> bytes | BadRequest | None:
    """The next line; BadRequest for one too long (skipped to its end, so the next request
    is read as it should be) or cut off; None at the end of the stream."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        return BadRequest("a request ends with a newline") if exc.partial.strip() else None
    except asyncio.LimitOverrunError as exc:
        too_long = BadRequest(f"a request line is at most {MAX_LINE} bytes")
        consumed = exc.consumed
    except ConnectionError:
        return None
    while True:  # drop the long line, a buffer at a time, never holding more than the limit
        try:
            await reader.readexactly(consumed)
            await reader.readuntil(b"\n")
            return too_long
        except asyncio.LimitOverrunError as exc:
            consumed = exc.consumed
        except (asyncio.IncompleteReadError, ConnectionError):
            return too_long


async def _finish(tasks: set[asyncio.Task[Any]], grace_s: float) -> None:
    """Wait up to `grace_s` for the tasks, then cancel what is left and wait for that."""
    if tasks:
        await asyncio.wait(set(tasks), timeout=grace_s)
    left = set(tasks)
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)


def _ready(request_id: int | None, error: ControlError) -> tuple[int | None, asyncio.Future[bytes]]:
    future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    future.set_result(encode_error(request_id, error))
    return request_id, future


async def _send_in_order(pending: Pending, writer: asyncio.StreamWriter) -> None:
    """Write each answer once it and every one before it are done. A client that went away
    is not written to any more, but its queue is still drained (its reader must not block)."""
    connected = True
    while (item := await pending.get()) is not None:
        request_id, answer = item
        await asyncio.wait({answer})  # raises only when this sender is cancelled
        if not connected:
            continue
        if answer.cancelled():
            data = encode_error(request_id, ControlError(ErrorCode.STOPPING, STOPPING_MESSAGE))
        else:
            data = answer.result()
        try:
            writer.write(data)
            await writer.drain()
        except (ConnectionError, OSError):
            connected = False


def _secret_values(args: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for name, value in args.items():
        if isinstance(value, Mapping):
            found += _secret_values(value)
        elif name.lower() in SECRET_ARGS and isinstance(value, str) and value:
            found.append(value)
    return found


def _log_failure(request: ControlRequest) -> None:
    """The traceback, with the request's secret arguments cut out of it (an exception's
    message may quote them); the arguments themselves are never logged."""
    text = traceback.format_exc()
    for secret in sorted(_secret_values(request.args), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    log.error("Control command %s failed:\n%s", request.cmd, text.rstrip())


async def _clear_stale(path: Path) -> None:
    """Remove a socket nobody serves; refuse a live one, or anything that is not a socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(
            ErrorCode.CANNOT_LISTEN,
            f"{path} exists and is not a socket: move it away to serve the control socket",
        )
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 2.0)
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # left by a process that died
        return
    except (OSError, TimeoutError) as exc:
        raise ControlError(
            ErrorCode.CANNOT_LISTEN, f"cannot check the control socket {path}: {exc}"
        ) from exc
    writer.close()
    raise ControlError(
        ErrorCode.ALREADY_RUNNING,
        f"another e2eproxy is running on this data dir (it serves {path}); stop it first, "
        "or give this one another data dir",
    )


def _bind_private(path: Path) -> socket.socket:
    """A listening socket file that nobody else can ever open: created under a umask that
    leaves the group and others no bits (no window where it is open to them), then 0600."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # umask is process-wide: 077 is harmless to any file another thread creates meanwhile.
        old = os.umask(0o077)
        try:
            sock.bind(os.fspath(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
    except OSError as exc:
        sock.close()
        raise ControlError(
            ErrorCode.CANNOT_LISTEN,
            f"cannot serve the control socket {path}: {exc.strerror or exc}",
        ) from exc
    return sock
