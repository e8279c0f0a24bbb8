"""`e2eproxy run` serves the control socket: a real process in front of the stub homeserver,
and `e2eproxy ctl` as a real process talking to it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import sys
from pathlib import Path

import aiohttp

from e2eproxy import __version__
from tests.support.plain_client import PlainClient
from tests.support.stub_homeserver import StubHomeserver

ENV = {
    k: v for k, v in os.environ.items()
    if k != "E2EPROXY_STORE_PASSPHRASE" and not k.lower().endswith("_proxy")
}
# Never touch the developer's real keyring: the store falls back to a key file in the data dir.
ENV["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def e2eproxy(*args: str) -> tuple[int, str, str]:
    """`python -m e2eproxy ARGS` to its end, without blocking this loop (the stub runs here)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "e2eproxy", *args, env=ENV, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def start_proxy(homeserver: str, port: int, data: Path) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "e2eproxy", "run", "--homeserver", homeserver,
        "--listen", f"127.0.0.1:{port}", "--data-dir", str(data), env=ENV,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    said = []
    while b"Listening on" not in (line := await asyncio.wait_for(process.stderr.readline(), 30)):
        said.append(line.decode())
        assert line, f"the proxy exited before listening: {''.join(said)}"
    return process


async def drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def test_run_serves_ctl_ping_and_accounts(stub: StubHomeserver, tmp_path: Path) -> None:
    assert stub.base_url is not None
    data, port = tmp_path / "data", free_port()
    proxy = await start_proxy(stub.base_url, port, data)
    assert proxy.stderr is not None
    draining = asyncio.create_task(drain(proxy.stderr))
    try:
        sock = data / "control.sock"
        assert stat.S_ISSOCK(os.stat(sock).st_mode)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        code, out, err = await e2eproxy("ctl", "--data-dir", str(data), "ping")
        assert (code, out) == (0, f"e2eproxy {__version__} is running (pid {proxy.pid})\n"), err

        stub.register("carol", "pw")
        async with aiohttp.ClientSession() as http:
            carol = PlainClient(http, f"http://127.0.0.1:{port}")
            await carol.login("carol", "pw")
        code, out, err = await e2eproxy("ctl", "--data-dir", str(data), "--json", "accounts")
        assert code == 0, err
        [account] = json.loads(out)
        assert (account["user_id"], account["device_id"]) == (carol.user_id, carol.device_id)
        assert account["homeserver"].rstrip("/") == stub.base_url
        code, out, _ = await e2eproxy("ctl", "--data-dir", str(data), "accounts")
        assert carol.device_id in out.splitlines()[1]

        # A second proxy on the same data dir stops at once, and the first serves on.
        code, _, err = await e2eproxy("run", "--homeserver", stub.base_url,
                                      "--listen", f"127.0.0.1:{free_port()}",
                                      "--data-dir", str(data))
        assert code == 1
        assert "another e2eproxy is running on this data dir" in err
        assert "Traceback" not in err
        assert (await e2eproxy("ctl", "--data-dir", str(data), "ping"))[0] == 0

        proxy.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proxy.wait(), 20) == 0
        assert not sock.exists()
        code, out, err = await e2eproxy("ctl", "--data-dir", str(data), "ping")
        assert (code, out) == (1, "")
        assert "e2eproxy is not running on this data dir" in err
    finally:
        if proxy.returncode is None:
            proxy.kill()
            await proxy.wait()
        await draining
