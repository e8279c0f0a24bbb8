"""What a request target may look like before the proxy classifies or forwards it.

The proxy routes on the percent-decoded path and sends the raw target on to the homeserver; both
must name the same endpoint for the homeserver and for any path-normalising hop before it. So
only origin-form targets (one leading "/") pass, and never a "." or ".." segment, raw or
percent-encoded: a hop that resolves them could turn what the proxy saw as a plain request into
a room send or an upload it never encrypted.
"""

from __future__ import annotations

import functools
import ipaddress
from urllib.parse import unquote, urlsplit

from e2eproxy.config import ServerConfig

DOT_SEGMENTS = frozenset({".", ".."})


def target_problem(target: str) -> str | None:
    """Why the raw request target (path and query) may not be served, or None."""
    if not target.startswith("/") or target.startswith("//"):
        return "only a path starting with a single '/' is accepted as request target"
    if "#" in target:  # never part of a request target; URL parsers would cut it off
        return "a request target carries no fragment"
    return path_problem(target.split("?", 1)[0])


def path_problem(raw_path: str) -> str | None:
    """Dot segments in the raw path, or in the path as a hop that decodes first reads it."""
    for view in (raw_path, unquote(raw_path)):
        if DOT_SEGMENTS.intersection(view.split("/")):
            return "'.' and '..' path segments are not accepted"
    return None


def merged_slashes(path: str) -> str:
    """The path as a hop that merges repeated slashes reads it (nginx does by default)."""
    while "//" in path:
        path = path.replace("//", "/")
    return path


def host_name(header: str) -> str | None:
    """The host name of a Host header ("name", "name:port", "[v6]:port"), lowercased."""
    try:
        parts = urlsplit("//" + header)
        hostname = parts.hostname
        _ = parts.port  # a malformed port is a malformed header
    except ValueError:
        return None
    if not hostname or parts.username is not None or parts.path or parts.query:
        return None
    return hostname.rstrip(".")


def is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def allowed_host_names(server: ServerConfig) -> frozenset[str]:
    """localhost, the listen address, public_url's host and the configured `allowed_hosts`."""
    names = {"localhost", server.listen.host.lower(), *server.allowed_hosts}
    if server.public_url:
        public = urlsplit(server.public_url).hostname
        if public:
            names.add(public.rstrip("."))
    return frozenset(names)


def host_allowed(header: str | None, names: frozenset[str]) -> bool:
    """A web page can reach a loopback listener by making its own domain resolve to 127.0.0.1
    (DNS rebinding); its requests then carry that domain as Host. An IP address, or a name the
    operator listed, cannot be such a page's."""
    if header is None:  # HTTP/1.0 without Host: no browser sends that
        return True
    return _host_verdict(header, names)


# Every request asks, nearly always with the same few Host values: parsing one (urlsplit, then
# ipaddress) costs more than the rest of the request's checks together. Bounded: LRU.
@functools.lru_cache(maxsize=256)
def _host_verdict(header: str, names: frozenset[str]) -> bool:
    name = host_name(header)
    return name is not None and (is_ip_address(name) or name in names)
