"""Logging set-up with a filter that keeps secrets out of every log line.

The filter is a last line of defence: code should never log a token, key, pickle, passphrase or
message body in the first place. It rewrites the formatted message, so it also covers arguments.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

REDACTED = "<redacted>"

_PATTERNS = (
    # Authorization: Bearer syt_...
    (re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"), rf"\1{REDACTED}"),
    # access_token=... in a query string, and "access_token": "..." in JSON
    (re.compile(r"(?i)((?:access|refresh)_token=)[^&\s\"']+"), rf"\1{REDACTED}"),
    (
        re.compile(
            r"(?i)([\"'](?:access_token|refresh_token|password|passphrase|pickle|session_key"
            r"|ciphertext|body|key|token)[\"']\s*:\s*[\"'])[^\"']*"
        ),
        rf"\1{REDACTED}",
    ),
)


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Replaces secrets in the rendered message; the record keeps no raw arguments afterwards."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg = cleaned
            record.args = None
        if record.exc_info and not record.exc_text:
            # Rendered here so the traceback (and the values in its messages) is cleaned too;
            # the formatter uses exc_text when it is set.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and the
    exception's traceback as ``exception``. It formats what the RedactingFilter left, so it
    must run behind one (as setup_logging puts it)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr at ``level``, as text lines or (``log_format="json"``) JSON lines; secrets
    are redacted either way."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would repeat every query string, tokens included; we log our own line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
