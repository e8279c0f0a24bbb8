"""HTTP/1.1 written by hand over a socket: request lines and headers exactly as an attacker
would send them, which no HTTP client library lets through unchanged (they normalise paths,
refuse absolute targets, set Host themselves)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from yarl import URL

# A deadline so a broken server fails the test instead of hanging it; nothing is timed.
READ_DEADLINE_S = 30.0


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def errcode(self) -> str | None:
        try:
            data = self.json
        except ValueError:
            return None
        return data.get("errcode") if isinstance(data, dict) else None


async def raw_request(
    base_url: str,
    request_line: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> RawAnswer:
    """Send `request_line` (e.g. "POST pany://x/_matrix/client/v3/login HTTP/1.1") and the
    headers as given (a Host for `base_url` unless one is given), then read the whole answer."""
    url = URL(base_url)
    assert url.host is not None and url.port is not None
    sent = {"Host": f"{url.host}:{url.port}", **(headers or {})}
    sent.setdefault("Content-Length", str(len(body)))
    sent["Connection"] = "close"
    head = request_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent.items()) + "\r\n"
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        return await asyncio.wait_for(_read_answer(reader), READ_DEADLINE_S)
    finally:
        writer.close()


async def _read_answer(reader: asyncio.StreamReader) -> RawAnswer:
    """One answer, read as far as its own length says (a server may keep the connection open
    a while, for instance to drain a request body it did not want)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = _unchunk(await reader.read())
    else:
        body = await reader.read()
    return RawAnswer(int(status_line.split()[1]), headers, body)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out
