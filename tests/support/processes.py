"""Helpers for tests that run e2eproxy as a real process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory (VmHWM) in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def wait_for_line(stream: IO[str], needle: str, max_lines: int = 50) -> str:
    """Read lines until one contains `needle` (warnings may come first); '' at end of stream."""
    for _ in range(max_lines):
        line = stream.readline()
        if not line or needle in line:
            return line
    return ""


class ProxyProcess:
    """`python -m e2eproxy run` as a child process, restartable on the same port and data dir.

    Its stderr is drained by a thread into `lines` (and `log_path`, when given), so a chatty proxy
    never blocks on a full pipe and a failing test can show what the proxy said:

        proxy = ProxyProcess(synapse.base_url, free_port(), tmp_path / "data")
        try:
            proxy.start()
            ...
            assert proxy.terminate() == 0
            proxy.start()  # same port, same store
        finally:
            proxy.stop()
    """

    def __init__(
        self,
        homeserver: str,
        port: int,
        data_dir: Path,
        log_path: Path | None = None,
        log_level: str = "info",
    ) -> None:
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
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
        command = [
            sys.executable,
            "-m",
            "e2eproxy",
            "run",
            "--homeserver",
            self.homeserver,
            "--listen",
            f"127.0.0.1:{self.port}",
            "--data-dir",
            str(self.data_dir),
            "--log-level",
            self.log_level,
        ]
        self.lines.append(f"--- start: {' '.join(command)}\n")
        listening = threading.Event()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
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
        return self._signal(signal.SIGTERM, timeout)

    def kill(self, timeout: float = 10.0) -> int:
        """SIGKILL (no cleanup at all, as in a crash); returns the exit status."""
        return self._signal(signal.SIGKILL, timeout)

    def _signal(self, signum: int, timeout: float) -> int:
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


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies, even by SIGKILL."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
