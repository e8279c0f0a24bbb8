"""Helpers for tests that run e2eproxy (or anything else) as a real child process: the child's
environment (`child_env`), a child that dies with the test process (`DIE_WITH_PARENT`), a port to
give it (`free_port`), a CLI command run to its end (`run_cli`), and the proxy itself, running
(`ProxyProcess`, `running_proxy`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

E2EPROXY = (sys.executable, "-m", "e2eproxy")
# How long a SIGTERM may take: SHUTDOWN_TIMEOUT_S (5 s) for in-flight requests, and a margin.
SIGTERM_EXIT_S = 8.0
# Never the developer's real keyring: a store falls back to a key file in its data dir.
NULL_KEYRING = "keyring.backends.null.Keyring"


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just handed out for `host` (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies, even by SIGKILL."""
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


# preexec_fn for every child the tests start (Linux only): none outlives the test process.
DIE_WITH_PARENT = _die_with_parent if sys.platform.startswith("linux") else None


def child_env(
    *, drop_proxies: bool = True, drop_passphrase: bool = True, **add: str
) -> dict[str, str]:
    """The environment for a child process: this one's, with the null keyring, and `add` on top.

    drop_proxies: without the HTTP proxy variables (`*_proxy`, any case): the child talks to
    127.0.0.1 and must not be sent through a proxy of the developer's.
    drop_passphrase: without E2EPROXY_STORE_PASSPHRASE: a store's key source is the test's choice
    (pass it in `add`), never whatever the developer's shell holds.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not (drop_proxies and key.lower().endswith("_proxy"))
        and not (drop_passphrase and key == "E2EPROXY_STORE_PASSPHRASE")
    }
    env["PYTHON_KEYRING_BACKEND"] = NULL_KEYRING
    env.update(add)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m e2eproxy ARGS` run to its end (stdin closed, output captured); the deadline
    `timeout` fails the test with TimeoutExpired. `env`: by default `child_env()`."""
    return subprocess.run(
        [*E2EPROXY, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env() if env is None else env,
        stdin=subprocess.DEVNULL,
    )


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory (VmHWM) in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


class ProxyProcess:
    """`python -m e2eproxy run` as a child process, restartable on the same port and data dir.

    Its stderr is drained by a thread into `lines` (and `log_path`, when given), so a chatty proxy
    never blocks on a full pipe and a failing test can show what the proxy said:

        with running_proxy(synapse.base_url, tmp_path / "data") as proxy:
            ...
            assert proxy.terminate() == 0
            proxy.start()  # same port, same store
    """

    def __init__(
        self,
        homeserver: str,
        port: int,
        data_dir: Path,
        log_path: Path | None = None,
        log_level: str = "info",
        config: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config  # a TOML file (e.g. a PostgreSQL store); flags still apply
        self.env = env or {}
        self.homeserver = homeserver
        self.port = port
        self.data_dir = data_dir
        self.log_path = log_path
        self.log_level = log_level
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "proxy not started"
        return self.process.pid

    def start(self, timeout: float = 30.0) -> None:
        """Spawn the proxy and return once it prints "Listening on"; fail after `timeout` s."""
        assert self.process is None or self.process.poll() is not None, "already running"
        command = [
            *E2EPROXY,
            "run",
            "--homeserver",
            self.homeserver,
            "--listen",
            f"127.0.0.1:{self.port}",
            "--data-dir",
            str(self.data_dir),
            "--log-level",
            self.log_level,
            *(["--config", str(self.config)] if self.config is not None else []),
        ]
        self.lines.append(f"--- start: {' '.join(command)}\n")
        listening = threading.Event()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(**self.env),
            preexec_fn=DIE_WITH_PARENT,
        )
        assert self.process.stderr is not None
        self._reader = threading.Thread(
            target=self._drain, args=(self.process.stderr, listening), daemon=True
        )
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not listening.wait(0.05):
            if self.process.poll() is not None:
                self._reader.join(2)
                raise AssertionError(
                    f"proxy exited with {self.process.returncode} before listening\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"proxy not listening within {timeout:.0f} s\n{self.tail()}")

    def _drain(self, stream: IO[str], listening: threading.Event) -> None:
        log = self.log_path.open("a") if self.log_path is not None else None
        try:
            for line in stream:
                self.lines.append(line)
                if log is not None:
                    log.write(line)
                    log.flush()
                if "Listening on" in line:
                    listening.set()
        finally:
            if log is not None:
                log.close()

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to `timeout` s for the exit; returns the exit status."""
        return self.signal_and_wait(signal.SIGTERM, timeout)

    def kill(self, timeout: float = 10.0) -> int:
        """SIGKILL (no cleanup at all, as in a crash); returns the exit status."""
        return self.signal_and_wait(signal.SIGKILL, timeout)

    def signal_and_wait(self, signum: int, timeout: float = 10.0) -> int:
        """Send `signum`, wait up to `timeout` s for the exit (else fail); the exit status."""
        process = self.process
        assert process is not None, "proxy not started"
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"proxy still running {timeout:.0f} s after signal {signum}\n{self.tail()}"
            ) from None
        if self._reader is not None:
            self._reader.join(2)
        return code

    def stop(self) -> None:
        """Make sure the child is gone (for `finally` blocks): SIGTERM, then SIGKILL."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(8)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(5)

    def tail(self, lines: int = 40) -> str:
        return "".join(self.lines[-lines:])


@contextlib.contextmanager
def running_proxy(
    homeserver: str, data_dir: Path, log_path: Path | None = None
) -> Iterator[ProxyProcess]:
    """`e2eproxy run` for `homeserver` on a free port, started; stopped (killed if need be) on
    the way out."""
    proxy = ProxyProcess(homeserver, free_port(), data_dir, log_path=log_path)
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()
