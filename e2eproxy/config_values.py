"""Checks of single configuration values: listen addresses and URLs. Every error names where
the value came from (the file and key, or the flag) and what is wrong with it."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from e2eproxy.errors import ConfigError

STORE_URL_SCHEMES = ("postgresql", "postgres")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"



def parse_listen(value: str, key: str, source: str = "<flag>") -> ListenAddress:
    """Parse HOST:PORT (IPv6 as [::1]:PORT)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{source}: {key}: expected HOST:PORT, got {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{source}: {key}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{source}: {key}: port {port} is out of range 1-65535")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(
                f"{source}: {key}: {host!r} is not an IP address (or 'localhost')"
            ) from None
    return ListenAddress(host, port)


def mask_url(url: str) -> str:
    """The URL with its password (user:PASSWORD@ or ?password=) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        return "<unparsable URL>"
    if has_password:  # the netloc is not empty, so this round trip keeps the URL's form
        user = parts.netloc.rpartition("@")[0].partition(":")[0]
        host = parts.netloc.rpartition("@")[2]
        url = urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    return _QUERY_PASSWORD.sub(r"\1***", url)


def check_store_url(value: str, key: str, source: str) -> str:
    """A PostgreSQL connection URL; the error never shows its password."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"{source}: {key}: not a valid URL: {mask_url(value)!r}") from None
    if parts.scheme not in STORE_URL_SCHEMES:
        raise ConfigError(f"{source}: {key}: expected a postgresql:// URL, got {mask_url(value)!r}")
    if parts.fragment:
        raise ConfigError(f"{source}: {key}: URL must not have a fragment: {mask_url(value)!r}")
    return value


def check_url(value: str, key: str, source: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{source}: {key}: expected an http(s) URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{source}: {key}: URL must not have a query or fragment: {value!r}")
    return value.rstrip("/")
