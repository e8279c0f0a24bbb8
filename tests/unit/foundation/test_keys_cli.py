"""`e2eproxy keys export|import` move room keys between stores in Element's file format."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import vodozemac

from e2eproxy.crypto.changes import Changes, InboundGroupSessionRecord
from e2eproxy.store import AccountKey, SqliteStore
from e2eproxy.types import DeviceId, RoomId, SessionId, UserId
from tests.support.processes import run_cli

USER = "@bot:example.org"


def keys_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("keys", *args)


def keys_file(
    command: str, file: Path, data_dir: Path, passphrase_file: Path
) -> subprocess.CompletedProcess[str]:
    """`e2eproxy keys export|import FILE` for USER, the passphrase read from a file."""
    return keys_cli(
        command, str(file), "--user", USER, "--data-dir", str(data_dir),
        "--passphrase-file", str(passphrase_file),
    )


async def store_with_sessions(data_dir: Path, count: int) -> list[str]:
    store = SqliteStore(data_dir, use_keyring=False)
    await store.open()
    records = []
    for _ in range(count):
        inbound = vodozemac.InboundGroupSession(vodozemac.GroupSession().session_key)
        records.append(
            InboundGroupSessionRecord(
                RoomId("!room:example.org"),
                SessionId(inbound.session_id),
                "curve",
                "ed",
                inbound,
                imported=False,
                shared_history=False,
                first_known_index=0,
            )
        )
    key = AccountKey(UserId(USER), DeviceId("DEV"))
    await store.save(key, Changes(inbound_group_sessions=records))
    await store.close()
    return [r.session_id for r in records]


async def stored_session_ids(data_dir: Path) -> set[str]:
    store = SqliteStore(data_dir, use_keyring=False)
    await store.open()
    try:
        ids: set[str] = set()
        for account in await store.list_accounts():
            async for batch in store.iter_inbound_group_sessions(account):
                ids.update(r.session_id for r in batch)
        return ids
    finally:
        await store.close()


def test_export_then_import_into_another_store(tmp_path: Path) -> None:
    session_ids = asyncio.run(store_with_sessions(tmp_path / "a", 3))
    asyncio.run(store_with_sessions(tmp_path / "b", 0))
    secret = tmp_path / "pass"
    secret.write_text("correct horse\n")
    out = tmp_path / "keys.txt"
    result = keys_file("export", out, tmp_path / "a", secret)
    assert result.returncode == 0, result.stderr
    assert out.read_text().startswith("-----BEGIN MEGOLM SESSION DATA-----")
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    refused = keys_file("export", tmp_path / "weak.txt", tmp_path / "a", empty)
    assert refused.returncode == 1 and "empty passphrase" in refused.stderr, refused.stderr
    assert not (tmp_path / "weak.txt").exists()
    result = keys_file("import", out, tmp_path / "b", secret)
    assert result.returncode == 0, result.stderr
    assert "Imported 3 of 3 room keys" in result.stderr
    assert asyncio.run(stored_session_ids(tmp_path / "b")) == set(session_ids)


def test_wrong_passphrase_imports_nothing_with_one_clear_line(tmp_path: Path) -> None:
    asyncio.run(store_with_sessions(tmp_path / "a", 1))
    asyncio.run(store_with_sessions(tmp_path / "b", 0))
    (tmp_path / "right").write_text("right")
    (tmp_path / "wrong").write_text("wrong")
    out = tmp_path / "keys.txt"
    assert keys_file("export", out, tmp_path / "a", tmp_path / "right").returncode == 0
    result = keys_file("import", out, tmp_path / "b", tmp_path / "wrong")
    assert result.returncode == 1
    assert result.stderr.startswith("e2eproxy: ")
    assert "Traceback" not in result.stderr
    assert asyncio.run(stored_session_ids(tmp_path / "b")) == set()


def test_no_terminal_and_no_passphrase_file_is_refused(tmp_path: Path) -> None:
    result = keys_cli(
        "export", str(tmp_path / "k"), "--user", USER, "--data-dir", str(tmp_path / "a")
    )
    assert result.returncode == 1
    assert "use --passphrase-file" in result.stderr
