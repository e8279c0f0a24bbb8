"""`e2eproxy ctl recovery ...` against fake handlers on a real control socket: the recovery key
is shown once or written to a new 0600 file (never over an existing one), secrets come from
files or a prompt, a reset needs --yes, and the password is asked only when wanted."""

from __future__ import annotations

import asyncio
import io
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from e2eproxy import cli
from e2eproxy.control.protocol import ControlError, ControlRequest, Handler
from e2eproxy.control.server import ControlServer

USER = "@bot:hs.example"
KEY = "EsTc LW2K PGiF wKEA 3As5 g5c4 BXwk qeeJ ZJV8 Q9fu gUMN UE4d"
Ctl = Callable[..., Awaitable[tuple[int, str, str]]]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
async def sent(tmp_path: Path) -> AsyncIterator[tuple[Path, list[tuple[str, dict[str, Any]]]]]:
    calls: list[tuple[str, dict[str, Any]]] = []

    def answer(cmd: str) -> Handler:
        async def handle(request: ControlRequest) -> Any:
            calls.append((cmd, dict(request.args)))
            if cmd in ("recovery.enable", "recovery.reset"):
                if request.args.get("password") is None and cmd == "recovery.reset":
                    raise ControlError("password_required", "The homeserver wants a password.")
                return {"recovery_key": KEY, "backup_version": "7"}
            if cmd == "recovery.recover":
                return {"imported": ["m.cross_signing.self_signing"], "backup_version": "7",
                        "restoring": True}
            return {"secret_storage": {"default_key": "K", "secrets": ["m.megolm_backup.v1"]},
                    "backup": {"server_version": "7", "in_use": "7", "has_key": True,
                               "to_upload": 3, "restore": {"total": 5, "imported": 5}},
                    "cross_signing": {"has_identity": True, "device_signed": True}}

        return handle

    data = tmp_path / "data"
    data.mkdir()
    names = ("recovery.status", "recovery.enable", "recovery.reset", "recovery.recover")
    server = ControlServer(data / "control.sock", {n: answer(n) for n in names})
    await server.start()
    yield data, calls
    await server.close()


@pytest.fixture
def ctl(sent: tuple[Path, list[Any]], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Ctl:
    monkeypatch.setattr(cli, "setup_logging", lambda level: None)

    async def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        argv = ["ctl", "--data-dir", str(sent[0]), "recovery", *args, "--user", USER]
        code = await asyncio.to_thread(cli.main, argv)
        out, err = capsys.readouterr()
        return code, out, err

    return run


async def test_enable_prints_the_key_once(ctl: Ctl, sent: tuple[Path, list[Any]]) -> None:
    code, out, _ = await ctl("enable")
    assert code == 0 and KEY in out and "not shown again" in out
    assert sent[1] == [("recovery.enable", {"passphrase": None, "password": None,
                                            "confirm": False})]


async def test_enable_writes_the_key_to_a_new_private_file(
    ctl: Ctl, tmp_path: Path
) -> None:
    target = tmp_path / "recovery.key"
    code, out, _ = await ctl("enable", "--recovery-key-file", str(target))
    assert code == 0 and KEY not in out
    assert target.read_text().strip() == KEY
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    code, _, err = await ctl("enable", "--recovery-key-file", str(target))
    assert code == 1 and "exists" in err  # never written over


async def test_recover_reads_the_key_from_a_file_or_asks(
    ctl: Ctl, sent: tuple[Path, list[Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    code, out, _ = await ctl("recover", "--recovery-key-file", str(key_file))
    assert code == 0 and "restoring" in out
    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("getpass.getpass", lambda prompt: "a long passphrase")
    code, _, _ = await ctl("recover")
    assert code == 0
    assert [args for _, args in sent[1]] == [{"recovery_key": KEY},
                                             {"recovery_key": "a long passphrase"}]


async def test_reset_needs_yes_and_asks_the_password(
    ctl: Ctl, sent: tuple[Path, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = await ctl("reset")
    assert code == 1 and "--yes" in err and sent[1] == []
    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("getpass.getpass", lambda prompt: "s3cret")
    code, out, err = await ctl("reset", "--yes")
    assert code == 0 and KEY in out and "s3cret" not in out + err
    assert [args["password"] for _, args in sent[1]] == [None, "s3cret"]


async def test_status_is_readable(ctl: Ctl) -> None:
    code, out, _ = await ctl("status")
    assert code == 0
    assert "room keys left to upload: 3" in out and "5 of 5 imported" in out
