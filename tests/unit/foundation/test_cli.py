"""The command line: version, check-config, and the life cycle of `run` in a real process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from e2eproxy import __version__
from tests.support.processes import wait_for_line

ENV = {k: v for k, v in os.environ.items() if k != "E2EPROXY_STORE_PASSPHRASE"}
# Never touch the developer's real keyring: the store falls back to a key file in the data dir.
ENV["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "e2eproxy", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env or ENV,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"e2eproxy {__version__}"


def test_check_config_prints_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[servers.main]\nhomeserver = "https://hs.example"\n')
    result = cli("check-config", str(config), env={**ENV, "E2EPROXY_STORE_PASSPHRASE": "hunter2"})
    assert result.returncode == 0, result.stderr
    assert '"homeserver": "https://hs.example"' in result.stdout
    assert '"listen": "127.0.0.1:8009"' in result.stdout
    assert '"passphrase": "<set>"' in result.stdout
    assert "hunter2" not in result.stdout + result.stderr


def test_check_config_refuses_a_bad_file_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[servers.main]\nhomeserver = "https://hs.example"\nlisen = "x"\n')
    result = cli("check-config", str(config))
    assert result.returncode == 1
    assert result.stderr.strip() == f"e2eproxy: {config}: servers.main.lisen: unknown key"
    assert "Traceback" not in result.stderr


def test_run_refuses_a_taken_port_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(
            "run",
            "--homeserver",
            "http://127.0.0.1:1",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(tmp_path / "data"),
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_refuses_an_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = cli("run", "--homeserver", "http://127.0.0.1:1", "--data-dir", str(blocker / "sub"))
    assert result.returncode == 1
    assert "is not writable" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_logs_where_it_listens_and_stops_cleanly(tmp_path: Path, signum: int) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "e2eproxy",
            "run",
            "--homeserver",
            "http://127.0.0.1:1",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert process.stderr is not None
        line = wait_for_line(process.stderr, "Listening on")
        assert f"Listening on http://127.0.0.1:{port} for homeserver http://127.0.0.1:1" in line
        process.send_signal(signum)
        assert process.wait(timeout=10) == 0  # the deadline: TimeoutExpired fails the test
        assert (tmp_path / "data").is_dir()
    finally:
        process.kill()
        process.wait()
