"""Logging set-up with a filter that keeps secrets out of every log line.

The filter is a last line of defence: code should never log a token, key, pickle, passphrase or
message body in the first place. It rewrites the formatted message, so it also covers arguments.
"""

from __future__ import annotations

import logging
import re
import sys

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


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would repeat every query string, tokens included; we log our own line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
