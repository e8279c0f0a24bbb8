"""The request target rules (#16): what the proxy refuses before it classifies or forwards a
request, and the upstream URL that can only ever name the configured homeserver."""

from __future__ import annotations

import pytest

from e2eproxy.config import ServerConfig
from e2eproxy.errors import MatrixError
from e2eproxy.proxy.targets import allowed_host_names, host_allowed, path_problem, target_problem
from e2eproxy.proxy.upstream import Upstream

HOMESERVER = "https://matrix.example.com"
ATTACKS = (
    "pany://x/_matrix/client/v3/login",  # https://matrix.example.com + pany:// -> .company
    "@evil.example/_matrix/client/v3/login",  # userinfo: the host becomes evil.example
    ".evil.example/_matrix/client/v3/login",  # matrix.example.com.evil.example
    ":8448@evil.example/_matrix/client/v3/login",
    "//evil.example/_matrix/client/v3/login",
    "http://evil.example/_matrix/client/v3/login",
    "/_matrix/client/v3/login#@evil.example",
)


@pytest.mark.parametrize("target", ATTACKS)
def test_upstream_url_never_leaves_the_configured_homeserver(target: str) -> None:
    with pytest.raises(MatrixError) as refused:
        Upstream(HOMESERVER, read_timeout=60).url_for(target)
    assert (refused.value.status, refused.value.errcode) == (400, "M_UNRECOGNIZED")
    assert target_problem(target) is not None


@pytest.mark.parametrize(
    ("base", "target", "expected"),
    [
        (HOMESERVER, "/_matrix/client/v3/sync?since=s1%202&filter=%7B%7D&&x",
         "https://matrix.example.com/_matrix/client/v3/sync?since=s1%202&filter=%7B%7D&&x"),
        ("http://127.0.0.1:8008/", "/_matrix/client/versions",
         "http://127.0.0.1:8008/_matrix/client/versions"),
        ("https://example.org/matrix", "/_matrix/media/v3/download/a/b%2Fc",
         "https://example.org/matrix/_matrix/media/v3/download/a/b%2Fc"),
        ("http://[::1]:8008", "/_matrix/client/v3/rooms/!r%3Ax/state/",
         "http://[::1]:8008/_matrix/client/v3/rooms/!r%3Ax/state/"),
    ],
)
def test_upstream_url_keeps_path_and_query_byte_for_byte(
    base: str, target: str, expected: str
) -> None:
    assert str(Upstream(base, read_timeout=60).url_for(target)) == expected


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/client/v3/rooms/!r/../../v3/rooms/!r/send/m.room.message/t",
        "/_matrix/client/v3/rooms/!r/x/%2e%2E/send/m.room.message/t",
        "/_matrix/client/v3/rooms/!r/./send/m.room.message/t",
        "/_matrix/client/v3/rooms/!r%2F..%2F!r/send/m.room.message/t",
        "/_matrix/client/v3/x/../../media/v3/upload",
    ],
)
def test_dot_segments_raw_or_encoded_are_refused(path: str) -> None:
    assert path_problem(path) is not None
    assert target_problem(path + "?access_token=x") is not None


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/client/v3/rooms/!r/state/m.room.avatar/",
        "/_matrix/client/v3/rooms/!r/state/m.bridge/fi.mau.x%3A%2F%2Fnet%2F1",
        "/_matrix/client/v3/rooms/!r/event/$a.b..c",
        "/_matrix/media/v3/download/example.org/abc...",
    ],
)
def test_ordinary_paths_pass(path: str) -> None:
    assert target_problem(path) is None


SERVER = ServerConfig(
    name="t", homeserver="https://matrix.example.com", public_url="https://Proxy.Example:8443",
    allowed_hosts=("bot.lan",),
)


@pytest.mark.parametrize(
    "host",
    [None, "127.0.0.1:8009", "127.0.0.1", "[::1]:8009", "10.1.2.3", "localhost:8009",
     "LOCALHOST", "localhost.", "proxy.example", "proxy.example:8443", "bot.lan:8009"],
)
def test_hosts_a_client_of_the_proxy_uses_are_accepted(host: str | None) -> None:
    assert host_allowed(host, allowed_host_names(SERVER))


@pytest.mark.parametrize(
    "host",
    ["evil.example:8009", "127.0.0.1.nip.io", "localhost.evil.example", "", "a@localhost",
     "localhost:x", "localhost/x", "matrix.example.com"],
)
def test_other_host_names_are_refused(host: str) -> None:
    assert not host_allowed(host, allowed_host_names(SERVER))


def test_host_verdicts_are_remembered_within_a_bound() -> None:
    """Each request's Host is checked through a small cache: a client sending a new Host with
    every request cannot grow it, and a verdict is the same from the cache as without it."""
    names = allowed_host_names(SERVER)
    for number in range(2000):
        assert not host_allowed(f"evil{number}.example", names)
    assert host_allowed("localhost:8009", names) and not host_allowed("evil0.example", names)
    from e2eproxy.proxy import targets

    assert targets._host_verdict.cache_info().currsize <= 256
