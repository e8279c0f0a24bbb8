"""`e2eproxy run` serves the control socket: a real process in front of the stub homeserver,
and `e2eproxy ctl` as a real process talking to it."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import aiohttp

from e2eproxy import __version__
from tests.support.plain_client import PlainClient
from tests.support.processes import ProxyProcess, free_port, run_cli
from tests.support.stub_homeserver import StubHomeserver


async def e2eproxy(*args: str) -> tuple[int, str, str]:
    """`python -m e2eproxy ARGS` to its end, without blocking this loop (the stub runs here)."""
    done = await asyncio.to_thread(run_cli, *args, timeout=60)
    return done.returncode, done.stdout, done.stderr


async def test_run_serves_ctl_ping_and_accounts(stub: StubHomeserver, tmp_path: Path) -> None:
    assert stub.base_url is not None
    data = tmp_path / "data"
    proxy = ProxyProcess(stub.base_url, free_port(), data)
    try:
        await asyncio.to_thread(proxy.start)  # the stub answers meanwhile, on this loop
        port = proxy.port
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

        # stats: what the process holds now (bench/soak.py samples it over time).
        code, out, err = await e2eproxy("ctl", "--data-dir", str(data), "--json", "stats")
        assert code == 0, err
        stats = json.loads(out)
        assert (stats["pid"], stats["accounts"]) == (proxy.pid, 1)
        assert stats["tasks"] >= 2 and stats["threads"] >= 1
        # The proxy counts during the call: the control connection and its listdir are open then.
        open_now = len(os.listdir(f"/proc/{proxy.pid}/fd"))
        assert open_now <= stats["open_fds"] <= open_now + 3
        code, out, _ = await e2eproxy("ctl", "--data-dir", str(data), "stats")
        assert (code, out.splitlines()[1]) == (0, "accounts held: 1")

        # A second proxy on the same data dir stops at once, and the first serves on.
        code, _, err = await e2eproxy("run", "--homeserver", stub.base_url,
                                      "--listen", f"127.0.0.1:{free_port()}",
                                      "--data-dir", str(data))
        assert code == 1
        assert "another e2eproxy is running on this data dir" in err
        assert "Traceback" not in err
        assert (await e2eproxy("ctl", "--data-dir", str(data), "ping"))[0] == 0

        assert await asyncio.to_thread(proxy.terminate, 20) == 0, proxy.tail()
        assert not sock.exists()
        code, out, err = await e2eproxy("ctl", "--data-dir", str(data), "ping")
        assert (code, out) == (1, "")
        assert "e2eproxy is not running on this data dir" in err
    finally:
        proxy.stop()


async def test_a_restart_after_sigkill_drives_its_accounts_at_once(
    stub: StubHomeserver, tmp_path: Path
) -> None:
    """The leases a killed process left are taken at once by the next process on its data dir
    (data_dir_claim.py), not waited out for a lease term (10 s) while requests and background
    work for those accounts wait."""
    assert stub.base_url is not None
    data = tmp_path / "data"
    proxy = ProxyProcess(stub.base_url, free_port(), data)
    try:
        await asyncio.to_thread(proxy.start)
        stub.register("carol", "pw")
        async with aiohttp.ClientSession() as http:
            carol = PlainClient(http, proxy.url)
            await carol.login("carol", "pw")
        assert await asyncio.to_thread(proxy.kill) == -9
        await asyncio.to_thread(proxy.start)  # well within the dead lease's 10 s

        code, out, err = await e2eproxy("ctl", "--data-dir", str(data), "--json", "stats")
        assert code == 0, err
        assert json.loads(out)["accounts"] == 1, proxy.tail()
        assert not [line for line in proxy.lines if "Not driving" in line], proxy.tail()
    finally:
        proxy.stop()
