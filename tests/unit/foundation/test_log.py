"""Secrets never reach a log line, even when code passes them by mistake."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest

from e2eproxy.log import RedactingFilter, redact, setup_logging


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer syt_secret_token",
        "GET /_matrix/client/v3/sync?since=s1&access_token=syt_secret_token&timeout=0",
        '{"access_token": "syt_secret_token", "user_id": "@a:b"}',
        '{"refresh_token":"syt_secret_token"}',
        '{"type": "m.login.password", "password": "syt_secret_token"}',
        '{"content": {"body": "syt_secret_token"}}',
        "{'access_token': 'syt_secret_token'}",  # a Python dict's repr
    ],
)
def test_redact_removes_the_secret(text: str) -> None:
    cleaned = redact(text)
    assert "syt_secret_token" not in cleaned
    assert "<redacted>" in cleaned


def test_redact_keeps_harmless_text() -> None:
    text = "GET /_matrix/client/v3/sync?since=s1&timeout=30000 -> 200"
    assert redact(text) == text


def test_filter_redacts_arguments(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("e2eproxy.test.redaction")
    logger.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            logger.info("request %s failed", "/sync?access_token=syt_abc123")
    finally:
        logger.filters.clear()
    assert "syt_abc123" not in caplog.text
    assert "/sync?access_token=<redacted>" in caplog.text


def test_filter_redacts_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("e2eproxy.test.redaction.traceback")
    logger.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.ERROR, logger=logger.name):
            try:
                raise ValueError("bad header Authorization: Bearer syt_in_a_traceback")
            except ValueError:
                logger.exception("request failed")
    finally:
        logger.filters.clear()
    assert "ValueError" in caplog.text
    assert "syt_in_a_traceback" not in caplog.text


def test_a_decrypted_file_name_stays_out_of_the_request_log() -> None:
    from aiohttp.test_utils import make_mocked_request

    from e2eproxy.proxy.middleware import loggable_path

    request = make_mocked_request("GET", "/_matrix/client/v1/media/download/s/id/secret-plan.pdf")
    request.match_info.update({"server": "s", "media_id": "id", "filename": "secret-plan.pdf"})
    assert loggable_path(request) == "/_matrix/client/v1/media/download/s/id/<filename>"


@pytest.fixture
def root_logging() -> Iterator[None]:
    """setup_logging replaces the root logger's handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_are_one_redacted_object_per_line(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("info", "json")
    logger = logging.getLogger("e2eproxy.test.json")
    logger.info("login of %s with %s", "@a:b", '{"access_token": "syt_json_secret"}')
    try:
        raise ValueError("bad header Authorization: Bearer syt_json_traceback")
    except ValueError:
        logger.exception("request failed")
    logger.debug("not at this level")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert set(first) == {"time", "level", "logger", "message"}
    assert first["level"] == "INFO" and first["logger"] == "e2eproxy.test.json"
    assert first["message"] == 'login of @a:b with {"access_token": "<redacted>"}'
    assert datetime.fromisoformat(first["time"]).tzinfo is not None
    assert second["message"] == "request failed" and second["level"] == "ERROR"
    assert "ValueError" in second["exception"]
    assert "syt_json_secret" not in "\n".join(lines)
    assert "syt_json_traceback" not in "\n".join(lines)


def test_text_logs_stay_the_default(root_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info")
    logging.getLogger("e2eproxy.test.text").info("token %s", "access_token=syt_text_secret")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("INFO e2eproxy.test.text: token access_token=<redacted>")
