"""The control protocol's lines, both ways, and the rules for the socket path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2eproxy.control.protocol import (
    MAX_LINE,
    MAX_SOCKET_PATH,
    BadRequest,
    ControlError,
    ControlRequest,
    encode_error,
    encode_request,
    encode_result,
    parse_request,
    parse_response,
    socket_path,
)
from e2eproxy.errors import ConfigError, E2EProxyError


def test_a_request_survives_its_line() -> None:
    request = ControlRequest("verify.show", "@a:hs", "DEV", {"id": "x\ny", "n": [1, None]})
    line = encode_request(5, request)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "id": 5, "cmd": "verify.show", "user": "@a:hs", "device": "DEV",
        "args": {"id": "x\ny", "n": [1, None]},
    }
    assert parse_request(line) == (5, request)


def test_user_device_and_args_may_be_left_out() -> None:
    assert parse_request(b'{"id": 0, "cmd": "ping"}\n') == (0, ControlRequest("ping"))


def test_a_line_over_the_limit_is_refused_before_parsing() -> None:
    with pytest.raises(BadRequest, match=str(MAX_LINE)):
        parse_request(b" " * (MAX_LINE + 1))


def test_answers_round_trip() -> None:
    ok = parse_response(encode_result(3, {"a": [1, 2]}))
    assert (ok.request_id, ok.result, ok.error) == (3, {"a": [1, 2]}, None)
    failed = parse_response(encode_error(None, ControlError("no_account", "none here")))
    assert failed.request_id is None
    assert failed.error is not None
    assert (failed.error.code, failed.error.message) == ("no_account", "none here")


def test_a_result_that_is_not_json_data_cannot_be_encoded() -> None:
    with pytest.raises(TypeError):
        encode_result(1, object())
    with pytest.raises(ValueError):
        encode_result(1, float("nan"))


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"[]",
        b'{"id": 1, "ok": true}',
        b'{"id": 1, "ok": "yes", "result": 1}',
        b'{"id": "1", "ok": true, "result": 1}',
        b'{"id": 1, "ok": false, "error": "bad"}',
        b'{"id": 1, "ok": false, "error": {"code": 1, "message": "m"}}',
        b'{"id": 1, "ok": true, "result": 1, "extra": 2}',
    ],
)
def test_a_malformed_answer_is_bad_response(line: bytes) -> None:
    with pytest.raises(ControlError) as bad:
        parse_response(line)
    assert bad.value.code == "bad_response"


def test_control_errors_are_e2eproxy_errors_with_their_message() -> None:
    error = ControlError("password_required", "the homeserver wants the password")
    assert isinstance(error, E2EProxyError)
    assert str(error) == "the homeserver wants the password"


def test_the_request_repr_leaves_out_its_arguments() -> None:
    request = ControlRequest("cross-signing.bootstrap", args={"password": "s3cret"})
    assert "s3cret" not in repr(request)


def test_the_socket_lives_in_the_data_dir(tmp_path: Path) -> None:
    assert socket_path(tmp_path) == tmp_path / "control.sock"


def test_a_socket_path_too_long_names_the_limit() -> None:
    just_fits = Path("/" + "d" * (MAX_SOCKET_PATH - len("/control.sock") - 1))
    assert len(str(socket_path(just_fits))) == MAX_SOCKET_PATH
    with pytest.raises(ConfigError, match=f"longer than the {MAX_SOCKET_PATH} bytes"):
        socket_path(Path(str(just_fits) + "d"))
