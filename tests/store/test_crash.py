"""A writer killed with SIGKILL mid-burst leaves the store at its last committed batch."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from e2eproxy.store.sqlite import DB_NAME, SqliteStore

from .conftest import ALICE
from .crash_writer import SESSIONS_PER_BATCH

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kill_after", [1, 25])
async def test_sigkill_during_a_burst_of_saves(tmp_path: Path, kill_after: int) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.store.crash_writer", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    last_printed = 0
    try:
        while last_printed < kill_after:
            line = child.stdout.readline()
            assert line, f"the writer died early (exit {child.poll()})"
            last_printed = int(line)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL

    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = SqliteStore(tmp_path, use_keyring=False)
    await store.open()
    try:
        token = int(await store.get_sync_token(ALICE, "client") or 0)
        # The child may have committed batches it had no time to print.
        assert token >= last_printed
        assert await store.get_txn(ALICE, "last") == {"n": token}
        assert await store.count_inbound_group_sessions(ALICE) == token * SESSIONS_PER_BATCH
        await store.set_sync_token(ALICE, "client", "after")  # and it is writable again
    finally:
        await store.close()
