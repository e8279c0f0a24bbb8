"""The command line: version, check-config, and the life cycle of `run` in a real process."""

from __future__ import annotations

import functools
import signal
import socket
from pathlib import Path

import pytest

from e2eproxy import __version__
from tests.support.processes import child_env, run_cli, running_proxy

cli = functools.partial(run_cli, timeout=30)


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"e2eproxy {__version__}"


def test_check_config_prints_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[servers.main]\nhomeserver = "https://hs.example"\n')
    result = cli("check-config", str(config), env=child_env(E2EPROXY_STORE_PASSPHRASE="hunter2"))
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
    with running_proxy("http://127.0.0.1:1", tmp_path / "data") as proxy:
        [line] = [line for line in proxy.lines if "Listening on" in line]
        expected = f"Listening on http://127.0.0.1:{proxy.port} for homeserver http://127.0.0.1:1"
        assert expected in line
        # The deadline: a proxy still running 10 s after the signal fails the test.
        assert proxy.signal_and_wait(signum, timeout=10) == 0
        assert (tmp_path / "data").is_dir()
