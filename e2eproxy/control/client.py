"""The client side of the control socket: what `e2eproxy ctl` uses to talk to `e2eproxy run`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from e2eproxy.control.protocol import (
    MAX_ANSWER_LINE,
    ControlError,
    ControlRequest,
    ErrorCode,
    check_socket_path,
    encode_request,
    parse_response,
)

CONNECT_TIMEOUT_S = 5.0
# A command may wait on the homeserver (key uploads, a verification's first message).
DEFAULT_TIMEOUT_S = 60.0


class NotRunning(ControlError):
    """Nobody serves the control socket: e2eproxy is not running on this data dir."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(
            ErrorCode.NOT_RUNNING,
            f"e2eproxy is not running on this data dir: {why} at {path} "
            "(start it with `e2eproxy run`, or point --data-dir/--config at its data dir)",
        )
        self.path = path


class ControlConnection:
    """One connection to the control socket; requests are sent one after the other."""

    def __init__(self, path: Path, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._broken = False

    async def call(
        self,
        cmd: str,
        *,
        user: str | None = None,
        device: str | None = None,
        args: Mapping[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> Any:
        """The command's result; its error answer is raised as ControlError."""
        if self._broken:
            raise ControlError(ErrorCode.BAD_RESPONSE, "this control connection is out of step")
        request_id = next(self._ids)
        line = encode_request(request_id, ControlRequest(cmd, user, device, dict(args or {})))
        # Until its answer is read, a request interrupted in any way (a timeout, Ctrl-C) leaves
        # the connection out of step: that answer would come in the place of the next one.
        self._broken = True
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(line)
                await self._writer.drain()
                answer = await self._reader.readuntil(b"\n")
        except TimeoutError:
            raise ControlError(
                ErrorCode.TIMEOUT, f"e2eproxy did not answer {cmd} within {timeout:g} s"
            ) from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
            raise ControlError(
                ErrorCode.CONNECTION_LOST,
                f"e2eproxy closed the control connection without answering {cmd} "
                "(is it stopping?)",
            ) from exc
        response = parse_response(answer)
        if response.request_id not in (request_id, None):
            raise ControlError(ErrorCode.BAD_RESPONSE, "e2eproxy answered another request")
        self._broken = False
        if response.error is not None:
            raise response.error
        return response.result

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


async def open_connection(
    socket_path: Path, *, timeout: float = CONNECT_TIMEOUT_S
) -> ControlConnection:
    """Connect; NotRunning when nobody serves `socket_path`."""
    check_socket_path(socket_path)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(
                socket_path, limit=MAX_ANSWER_LINE
            )
    except FileNotFoundError:
        raise NotRunning(socket_path, "no control socket") from None
    except ConnectionRefusedError:
        raise NotRunning(socket_path, "nothing answers the control socket") from None
    except PermissionError:
        raise ControlError(
            ErrorCode.PERMISSION_DENIED,
            f"cannot open the control socket {socket_path}: permission denied (run this as "
            "the user that runs e2eproxy)",
        ) from None
    except TimeoutError:
        raise ControlError(
            ErrorCode.TIMEOUT, f"e2eproxy did not accept a connection on {socket_path}"
        ) from None
    except OSError as exc:
        raise ControlError(
            ErrorCode.CONNECTION_FAILED, f"cannot connect to {socket_path}: {exc.strerror or exc}"
        ) from None
    return ControlConnection(socket_path, reader, writer)


@contextlib.asynccontextmanager
async def connect(
    socket_path: Path, *, timeout: float = CONNECT_TIMEOUT_S
) -> AsyncIterator[ControlConnection]:
    connection = await open_connection(socket_path, timeout=timeout)
    try:
        yield connection
    finally:
        await connection.close()


async def call(
    socket_path: Path,
    cmd: str,
    *,
    user: str | None = None,
    device: str | None = None,
    args: Mapping[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Any:
    """One command on a connection of its own; its error answer is raised as ControlError,
    and NotRunning when the proxy does not serve `socket_path`."""
    async with connect(socket_path) as connection:
        return await connection.call(cmd, user=user, device=device, args=args, timeout=timeout)
