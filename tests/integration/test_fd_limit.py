"""`e2eproxy run` raises its open files limit to the hard one: a fleet of accounts holds one
long-poll socket each, and the usual soft limit (1024) would stop a thousand of them with
"too many open files"."""

from __future__ import annotations

import resource
from pathlib import Path

from e2eproxy.service import FD_LIMIT_WITHOUT_HARD
from tests.support.processes import running_proxy
from tests.support.stub_homeserver import StubHomeserver

LOW = 256


def _soft_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return line.split()[3]
    raise AssertionError("no open files limit in /proc")


async def test_the_proxy_raises_its_open_files_limit(stub: StubHomeserver, tmp_path: Path
                                                     ) -> None:
    assert stub.base_url is not None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW, hard))  # the child starts with it
    try:
        with running_proxy(stub.base_url, tmp_path / "data") as proxy:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            assert proxy.process is not None
            expected = hard if hard != resource.RLIM_INFINITY else FD_LIMIT_WITHOUT_HARD
            assert _soft_limit(proxy.process.pid) == str(expected)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
