"""The control socket over a real Unix socket: private, several requests a connection answered
in order, strict about what it reads, errors that never leak a secret, one server per socket."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from e2eproxy.control.client import NotRunning, call
from e2eproxy.control.protocol import MAX_LINE, ControlError, ControlRequest, Handler
from e2eproxy.control.server import ControlServer
from e2eproxy.errors import ConfigError

PASSWORD = "hunter2-correct-horse"


class Fakes:
    """Handlers the tests drive: `slow` waits for `release`."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.slow_started = asyncio.Event()

    def table(self) -> dict[str, Handler]:
        async def echo(request: ControlRequest) -> Any:
            return {"cmd": request.cmd, "user": request.user, "device": request.device,
                    "args": dict(request.args)}

        async def slow(request: ControlRequest) -> Any:
            self.slow_started.set()
            await self.release.wait()
            return "slow done"

        async def refuse(request: ControlRequest) -> Any:
            raise ControlError("no_account", "no device of @x:y")

        async def crash(request: ControlRequest) -> Any:
            raise RuntimeError(f"boom while using {request.args.get('password')}")

        async def not_json(request: ControlRequest) -> Any:
            return object()

        return {"echo": echo, "slow": slow, "refuse": refuse, "crash": crash,
                "not_json": not_json}


@pytest.fixture
def fakes() -> Fakes:
    return Fakes()


@pytest.fixture
async def server(tmp_path: Path, fakes: Fakes) -> AsyncIterator[ControlServer]:
    served = ControlServer(tmp_path / "control.sock", fakes.table(), grace_s=0.2)
    await served.start()
    yield served
    fakes.release.set()
    await served.close()


class Conn:
    """A raw client: lines out, answers in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: Path) -> Conn:
        reader, writer = await asyncio.open_unix_connection(path, limit=4 * MAX_LINE)
        return cls(reader, writer)

    async def send(self, *lines: bytes | dict[str, Any]) -> None:
        for line in lines:
            data = line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n"
            self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), 5)
        assert line.endswith(b"\n"), line
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def close(self) -> None:
        self.writer.close()


def request(request_id: int, cmd: str, **rest: Any) -> dict[str, Any]:
    return {"id": request_id, "cmd": cmd, "user": None, "device": None, "args": {}, **rest}


async def test_the_socket_is_private_to_its_owner(server: ControlServer) -> None:
    mode = os.stat(server.path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


async def test_one_connection_sends_several_requests_answered_in_order(
    server: ControlServer, fakes: Fakes
) -> None:
    conn = await Conn.open(server.path)
    await conn.send(
        request(1, "slow"),
        request(2, "echo", user="@a:hs", device="DEV", args={"x": [1, "two"]}),
        request(3, "echo"),
    )
    await fakes.slow_started.wait()
    # The slow command blocks neither another connection...
    other = await Conn.open(server.path)
    await other.send(request(7, "echo"))
    assert (await other.answer())["id"] == 7
    # ...nor the requests after it on its own (they run; their answers wait their turn).
    fakes.release.set()
    answers = [await conn.answer() for _ in range(3)]
    assert [a["id"] for a in answers] == [1, 2, 3]
    assert answers[0] == {"id": 1, "ok": True, "result": "slow done"}
    assert answers[1]["result"] == {
        "cmd": "echo", "user": "@a:hs", "device": "DEV", "args": {"x": [1, "two"]}
    }
    await conn.close()
    await other.close()


async def test_unknown_commands_and_handler_errors_are_answered(server: ControlServer) -> None:
    conn = await Conn.open(server.path)
    await conn.send(request(1, "nope"), request(2, "refuse"), request(3, "echo"))
    assert await conn.answer() == {
        "id": 1, "ok": False,
        "error": {"code": "unknown_command", "message": "unknown command 'nope'"},
    }
    assert await conn.answer() == {
        "id": 2, "ok": False, "error": {"code": "no_account", "message": "no device of @x:y"},
    }
    assert (await conn.answer())["ok"] is True
    await conn.close()


async def test_an_internal_error_is_logged_without_its_secrets_and_not_told(
    server: ControlServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    conn = await Conn.open(server.path)
    await conn.send(request(1, "crash", args={"password": PASSWORD}), request(2, "not_json"))
    crashed, unserializable = await conn.answer(), await conn.answer()
    for answer in (crashed, unserializable):
        assert answer["ok"] is False
        assert answer["error"]["code"] == "internal"
    assert "boom" not in json.dumps(crashed)
    assert "RuntimeError: boom while using <redacted>" in caplog.text  # the traceback is there
    assert "Control command crash failed" in caplog.text
    assert PASSWORD not in caplog.text
    await conn.close()


async def test_the_password_is_never_logged_on_any_path(
    server: ControlServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    conn = await Conn.open(server.path)
    for cmd in ("echo", "refuse", "nope", "crash"):
        await conn.send(request(1, cmd, args={"password": PASSWORD}))
        await conn.answer()
    await conn.send(b'{"id": 2, "cmd": "echo", "args": {"password": "' + PASSWORD.encode() + b'"}')
    await conn.send(b"\n")
    await conn.answer()
    assert PASSWORD not in caplog.text
    assert "password" not in repr(ControlRequest("echo", args={"password": PASSWORD}))
    await conn.close()


@pytest.mark.parametrize(
    ("line", "answered_id"),
    [
        (b"not json\n", None),
        (b"[1, 2]\n", None),
        (b'{"cmd": "echo"}\n', None),
        (b'{"id": "1", "cmd": "echo"}\n', None),
        (b'{"id": true, "cmd": "echo"}\n', None),
        (b'{"id": -1, "cmd": "echo"}\n', None),
        (b'{"id": 4, "cmd": ""}\n', 4),
        (b'{"id": 4, "cmd": 7}\n', 4),
        (b'{"id": 4, "cmd": "echo", "args": [1]}\n', 4),
        (b'{"id": 4, "cmd": "echo", "user": 1}\n', 4),
        (b'{"id": 4, "cmd": "echo", "extra": 1}\n', 4),
        (b'{"id": 4, "cmd": "echo", "args": {"x": NaN}}\n', None),
        (b'{"id": 4, "cmd": "echo", "cmd": "crash"}\n', None),
        (b'{"id": 4, "cmd": "\xff"}\n', None),
    ],
)
async def test_a_bad_request_is_refused_and_the_connection_goes_on(
    server: ControlServer, line: bytes, answered_id: int | None
) -> None:
    conn = await Conn.open(server.path)
    await conn.send(line, request(9, "echo"))
    answer = await conn.answer()
    assert answer["id"] == answered_id
    assert answer["ok"] is False
    assert answer["error"]["code"] == "bad_request"
    assert (await conn.answer())["id"] == 9
    await conn.close()


@pytest.mark.parametrize("size", [MAX_LINE + 10, 5 * MAX_LINE])
async def test_an_oversized_line_is_refused_and_skipped(server: ControlServer, size: int) -> None:
    conn = await Conn.open(server.path)
    await conn.send(request(1, "echo"))
    assert (await conn.answer())["ok"] is True
    await conn.send(b'{"id": 2, "cmd": "echo", "args": {"x": "' + b"a" * size + b'"}}\n',
                    request(3, "echo"))
    answer = await conn.answer()
    assert answer["ok"] is False
    assert answer["error"]["code"] == "bad_request"
    assert str(MAX_LINE) in answer["error"]["message"]
    assert (await conn.answer())["id"] == 3  # the next line is read as a request again
    await conn.close()


async def test_a_request_cut_off_without_newline_is_refused(server: ControlServer) -> None:
    conn = await Conn.open(server.path)
    await conn.send(b'{"id": 1, "cmd": "echo"}')
    conn.writer.write_eof()
    answer = await conn.answer()
    assert answer["error"]["code"] == "bad_request"
    await conn.close()


async def test_a_stale_socket_is_replaced(tmp_path: Path, fakes: Fakes) -> None:
    path = tmp_path / "control.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))  # bound, never listening: what a killed process leaves
    dead.close()
    served = ControlServer(path, fakes.table())
    await served.start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert (await call(path, "echo"))["cmd"] == "echo"
    finally:
        await served.close()
    assert not path.exists()


async def test_a_second_server_on_a_live_socket_is_refused(
    server: ControlServer, fakes: Fakes
) -> None:
    second = ControlServer(server.path, fakes.table())
    with pytest.raises(ControlError) as refused:
        await second.start()
    assert refused.value.code == "already_running"
    assert str(server.path) in str(refused.value)
    assert (await call(server.path, "echo"))["cmd"] == "echo"  # the first one serves on


async def test_a_file_that_is_no_socket_is_left_alone(tmp_path: Path, fakes: Fakes) -> None:
    path = tmp_path / "control.sock"
    path.write_text("mine")
    with pytest.raises(ControlError, match="is not a socket"):
        await ControlServer(path, fakes.table()).start()
    assert path.read_text() == "mine"


async def test_a_path_too_long_for_a_unix_socket_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    with pytest.raises(ConfigError, match="107 bytes"):
        await ControlServer(deep / "control.sock", {}).start()


async def test_close_interrupts_slow_commands_and_removes_the_socket(
    server: ControlServer, fakes: Fakes
) -> None:
    conn = await Conn.open(server.path)
    await conn.send(request(1, "slow"))
    await fakes.slow_started.wait()
    await server.close()  # grace 0.2 s, then the command is cancelled
    answer = await conn.answer()
    assert answer["id"] == 1
    assert answer["error"]["code"] == "stopping"
    assert not server.path.exists()
    await conn.close()


async def test_the_client_says_not_running_without_a_server(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with pytest.raises(NotRunning) as missing:
        await call(path, "ping")
    assert missing.value.code == "not_running"
    assert str(path) in str(missing.value)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()
    with pytest.raises(NotRunning, match="nothing answers"):
        await call(path, "ping")


async def test_the_client_returns_results_and_raises_error_answers(
    server: ControlServer, fakes: Fakes
) -> None:
    result = await call(server.path, "echo", user="@u:hs", device="D", args={"n": 1})
    assert result == {"cmd": "echo", "user": "@u:hs", "device": "D", "args": {"n": 1}}
    with pytest.raises(ControlError) as refused:
        await call(server.path, "refuse")
    assert (refused.value.code, refused.value.message) == ("no_account", "no device of @x:y")
    with pytest.raises(ControlError) as late:
        await call(server.path, "slow", timeout=0.1)
    assert late.value.code == "timeout"
