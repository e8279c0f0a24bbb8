"""`e2eproxy ctl` end to end: the command line's main() against a ControlServer with fake
handlers on a real socket. Each subcommand sends the right command with the right arguments and
shows its result to people (and raw with --json); errors are one line and exit status 1."""

from __future__ import annotations

import asyncio
import io
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from e2eproxy import cli
from e2eproxy.control import verify_flow
from e2eproxy.control.protocol import ControlError, ControlRequest, Handler
from e2eproxy.control.server import ControlServer
from e2eproxy.control.verify_flow import VerifyTarget, verify_interactively
from tests.support.processes import E2EPROXY, child_env

USER = "@bot:hs.example"
OTHER = "@alice:hs.example"
EMOJI = [("🐶", "Dog"), ("🐱", "Cat"), ("🦁", "Lion"), ("🐎", "Horse"), ("🦄", "Unicorn"),
         ("🐷", "Pig"), ("🐘", "Elephant")]
SAS = {"emoji": [{"symbol": s, "name": n} for s, n in EMOJI], "decimals": [1234, 5678, 9012]}
STATUS = {"has_identity": True, "master_key": "MASTERKEY", "device_signed": True,
          "private_keys": {"master": True, "self_signing": True, "user_signing": False},
          "trusted": True}
DEVICES = {
    "identity": {"master_key": "ALICEMASTER", "verified": False, "verification_violation": True,
                 "needs_approval": True},
    "devices": [
        {"device_id": "PHONE", "display_name": "Alice's phone", "ed25519": "EDPHONE",
         "trust": "cross_signed", "cross_signed": True, "local_trust": "unset",
         "this_device": False},
        {"device_id": "LAPTOP", "display_name": None, "ed25519": "EDLAPTOP",
         "trust": "unverified", "cross_signed": False, "local_trust": "blacklisted",
         "this_device": True},
    ],
}
FLOWS = [{"id": "FLOW1", "other_user": OTHER, "other_device": "PHONE", "phase": "ready",
          "we_requested": True, "room_id": None}]


class FakeProxy:
    """The commands of a proxy, scripted: a verification goes requested -> keys_exchanged
    (emoji) -> confirmed -> done, one step a verify.show."""

    def __init__(self) -> None:
        self.requests: list[ControlRequest] = []
        self.shows = 0
        self.confirmed = False
        self.cancel_at_show: int | None = None
        self.health = {"status": "ready", "checks": {"store": "ok", "homeserver:main": "ok"}}

    def show(self) -> dict[str, Any]:
        self.shows += 1
        if self.cancel_at_show is not None and self.shows >= self.cancel_at_show:
            return {"phase": "cancelled", "emoji": None, "decimals": None, "cancellation": {
                "code": "m.user", "reason": "Alice said no", "by_us": False}}
        if self.confirmed:
            return {"phase": "confirmed" if self.shows % 2 else "done", **SAS,
                    "cancellation": None}
        if self.shows == 1:
            return {"phase": "requested", "emoji": None, "decimals": None, "cancellation": None}
        return {"phase": "keys_exchanged", **SAS, "cancellation": None}

    def table(self) -> dict[str, Handler]:
        answers: dict[str, Callable[[ControlRequest], Any]] = {
            "ping": lambda r: {"version": "9.9.9", "pid": 4242},
            "health": lambda r: self.health,
            "accounts": lambda r: [{"user_id": USER, "device_id": "DEV",
                                    "homeserver": "https://hs.example/"}],
            "cross-signing.status": lambda r: STATUS,
            "cross-signing.bootstrap": self.bootstrap,
            "devices": lambda r: DEVICES,
            "trust": lambda r: {},
            "trust.accept-identity-change": lambda r: {},
            "verify.list": lambda r: FLOWS,
            "verify.start": lambda r: {"id": "FLOW1"},
            "verify.show": lambda r: self.show(),
            "verify.accept": lambda r: {},
            "verify.confirm": self.confirm,
            "verify.mismatch": lambda r: {},
            "verify.cancel": lambda r: {},
        }

        def handler(answer: Callable[[ControlRequest], Any]) -> Handler:
            async def handle(request: ControlRequest) -> Any:
                self.requests.append(request)
                return answer(request)

            return handle

        return {name: handler(answer) for name, answer in answers.items()}

    def bootstrap(self, request: ControlRequest) -> Any:
        password = request.args.get("password")
        if password is None:
            raise ControlError("password_required", "The homeserver wants your password.")
        if password != "s3cret":
            raise ControlError("homeserver", "wrong password")
        return {"master_key": "NEWMASTER"}

    def confirm(self, request: ControlRequest) -> Any:
        self.confirmed = True
        return {}

    def sent(self) -> list[tuple[str, str | None, str | None, dict[str, Any]]]:
        return [(r.cmd, r.user, r.device, dict(r.args)) for r in self.requests]


@pytest.fixture
def fake() -> FakeProxy:
    return FakeProxy()


@pytest.fixture
async def data_dir(tmp_path: Path, fake: FakeProxy) -> AsyncIterator[Path]:
    data = tmp_path / "data"
    data.mkdir()
    server = ControlServer(data / "control.sock", fake.table())
    await server.start()
    yield data
    await server.close()


@pytest.fixture(autouse=True)
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    # main() would replace pytest's log handlers; and the flow need not wait half a second.
    monkeypatch.setattr(cli, "setup_logging", lambda level: None)
    monkeypatch.setattr(verify_flow, "POLL_S", 0.01)


Ctl = Callable[..., Awaitable[tuple[int, str, str]]]


@pytest.fixture
def ctl(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> Ctl:
    """`await ctl(*args)` runs `e2eproxy ctl --data-dir DATA ARGS` in a thread (the server
    answers from this loop): (exit status, stdout, stderr)."""

    async def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(cli.main, ["ctl", "--data-dir", str(data_dir), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


async def test_ping(ctl: Ctl, fake: FakeProxy) -> None:
    assert await ctl("ping") == (0, "e2eproxy 9.9.9 is running (pid 4242)\n", "")
    code, out, _ = await ctl("ping", "--json")
    assert (code, json.loads(out)) == (0, {"version": "9.9.9", "pid": 4242})
    assert fake.sent() == [("ping", None, None, {})] * 2


async def test_health_exits_1_unless_ready(ctl: Ctl, fake: FakeProxy) -> None:
    code, out, _ = await ctl("health")
    assert (code, out.splitlines()) == (0, ["e2eproxy is ready", "  homeserver:main: ok",
                                            "  store: ok"])
    fake.health = {"status": "unavailable",
                   "checks": {"store": "ok", "homeserver:main": "Cannot reach the homeserver"}}
    code, out, _ = await ctl("health")
    assert code == 1
    assert out.splitlines()[:2] == ["e2eproxy is unavailable",
                                    "  homeserver:main: Cannot reach the homeserver"]
    code, out, _ = await ctl("--json", "health")
    assert (code, json.loads(out)) == (1, fake.health)


async def test_accounts(ctl: Ctl) -> None:
    code, out, _ = await ctl("accounts")
    assert code == 0
    assert out.splitlines() == [
        "USER             DEVICE  HOMESERVER",
        "@bot:hs.example  DEV     https://hs.example/",
    ]
    code, out, _ = await ctl("--json", "accounts")
    assert json.loads(out)[0]["device_id"] == "DEV"


async def test_a_config_file_names_the_data_dir(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[servers.main]\nhomeserver = "https://hs.example"\n'
                      f'[store]\ndata_dir = "{data_dir}"\n')
    assert await asyncio.to_thread(cli.main, ["ctl", "--config", str(config), "ping"]) == 0
    assert "is running" in capsys.readouterr().out


async def test_cross_signing_status(ctl: Ctl, fake: FakeProxy) -> None:
    code, out, _ = await ctl("cross-signing", "status", "--user", USER)
    assert code == 0
    assert "Master key:            MASTERKEY" in out
    assert "master yes, self-signing yes, user-signing no" in out
    assert "Identity trusted:      yes" in out
    code, out, _ = await ctl("cross-signing", "status", "--user", USER, "--device", "D", "--json")
    assert json.loads(out) == STATUS
    assert fake.sent()[-1] == ("cross-signing.status", USER, "D", {})


async def test_bootstrap_with_a_password_file(
    ctl: Ctl, fake: FakeProxy, tmp_path: Path
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    code, out, _ = await ctl("cross-signing", "bootstrap", "--user", USER,
                             "--password-file", str(secret))
    assert (code, out) == (0, "Cross-signing is set up. Master key: NEWMASTER\n")
    assert fake.sent() == [("cross-signing.bootstrap", USER, None, {"password": "s3cret"})]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_bootstrap_asks_the_password_when_the_server_wants_it(
    ctl: Ctl, fake: FakeProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts: list[str] = []
    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("getpass.getpass", lambda prompt: prompts.append(prompt) or "s3cret")
    code, out, err = await ctl("cross-signing", "bootstrap", "--user", USER, "--json")
    assert code == 0
    assert json.loads(out) == {"master_key": "NEWMASTER"}
    assert prompts == [f"Password of {USER}: "]
    assert "The homeserver wants your password." in err
    assert [args for _, _, _, args in fake.sent()] == [{"password": None},
                                                       {"password": "s3cret"}]
    assert "s3cret" not in out + err


async def test_bootstrap_without_a_terminal_says_to_use_a_password_file(
    ctl: Ctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO())
    code, out, err = await ctl("cross-signing", "bootstrap", "--user", USER)
    assert (code, out) == (1, "")
    assert err.startswith("e2eproxy: The homeserver wants your password.")
    assert "--password-file" in err


async def test_devices_as_a_table(ctl: Ctl, fake: FakeProxy) -> None:
    code, out, _ = await ctl("devices", "--user", USER, OTHER)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"Identity of {OTHER}: master key ALICEMASTER (not verified)"
    assert lines[1].startswith(f"WARNING: the identity of {OTHER} changed since it was verified")
    assert f"ctl trust --user {USER} {OTHER} --accept-identity-change" in lines[1]
    assert lines[3].split() == ["DEVICE", "NAME", "TRUST", "CROSS-SIGNED", "LOCAL", "ED25519"]
    assert lines[4].split() == ["PHONE", "Alice's", "phone", "cross_signed", "yes", "unset",
                                "EDPHONE"]
    assert lines[5].split() == ["*", "LAPTOP", "-", "unverified", "no", "blacklisted", "EDLAPTOP"]
    assert fake.sent() == [("devices", USER, None, {"user_id": OTHER})]
    # Without @USER: the account's own devices; --user may come before the subcommand.
    code, out, _ = await ctl("--user", USER, "devices", "--json")
    assert json.loads(out) == DEVICES
    assert fake.sent()[-1] == ("devices", USER, None, {"user_id": USER})


async def test_trust_a_device_or_a_new_identity(ctl: Ctl, fake: FakeProxy) -> None:
    code, out, _ = await ctl("trust", "--user", USER, OTHER, "PHONE", "verified")
    assert (code, out) == (0, f"Device PHONE of {OTHER} is now verified.\n")
    code, out, _ = await ctl("trust", "--user", USER, OTHER, "--accept-identity-change")
    assert (code, out) == (0, f"Accepted the current identity of {OTHER}.\n")
    assert fake.sent() == [
        ("trust", USER, None, {"user_id": OTHER, "device_id": "PHONE", "trust": "verified"}),
        ("trust.accept-identity-change", USER, None, {"user_id": OTHER}),
    ]
    code, _, err = await ctl("trust", "--user", USER, OTHER, "PHONE", "trusted")
    assert code == 1
    assert "verified, blacklisted, ignored, unset" in err
    assert len(fake.requests) == 2  # nothing sent


async def test_verify_subcommands(ctl: Ctl, fake: FakeProxy) -> None:
    code, out, _ = await ctl("verify", "list", "--user", USER)
    assert code == 0
    assert out.splitlines()[1].split() == ["FLOW1", OTHER, "PHONE", "ready", "us", "to-device"]
    code, out, _ = await ctl("verify", "start", "--user", USER, OTHER, "PHONE")
    assert out == (f"Verification FLOW1 requested. Follow it with: "
                   f"e2eproxy ctl verify show --user {USER} FLOW1\n")
    code, out, _ = await ctl("verify", "start", "--user", USER, OTHER, "--json")
    assert json.loads(out) == {"id": "FLOW1"}
    for action, said in (("accept", "Accepted"), ("confirm", "Confirmed"),
                         ("cancel", "Cancelled")):
        assert await ctl("verify", action, "--user", USER, "FLOW1") == (
            0, f"{said} verification FLOW1.\n", "")
    assert fake.sent() == [
        ("verify.list", USER, None, {}),
        ("verify.start", USER, None, {"user_id": OTHER, "device_id": "PHONE"}),
        ("verify.start", USER, None, {"user_id": OTHER, "device_id": None}),
        ("verify.accept", USER, None, {"id": "FLOW1"}),
        ("verify.confirm", USER, None, {"id": "FLOW1"}),
        ("verify.cancel", USER, None, {"id": "FLOW1"}),
    ]


async def test_verify_show_prints_the_emoji_and_numbers(ctl: Ctl, fake: FakeProxy) -> None:
    fake.shows = 1  # the next one has the emoji
    code, out, _ = await ctl("verify", "show", "--user", USER, "FLOW1")
    assert code == 0
    assert out.splitlines() == [
        "Phase: keys_exchanged",
        "Compare these emoji with the other device:",
        *(f"  {symbol}  {name}" for symbol, name in EMOJI),
        "Or these numbers: 1234 5678 9012",
    ]
    assert fake.sent() == [("verify.show", USER, None, {"id": "FLOW1"})]


async def test_interactive_verify_when_the_emoji_match(
    ctl: Ctl, fake: FakeProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    code, out, err = await ctl("verify", "--user", USER, OTHER, "PHONE")
    assert code == 0, err
    assert f"Asked {OTHER} to verify" in out
    for symbol, name in EMOJI:
        assert f"  {symbol}  {name}\n" in out
    assert "1234 5678 9012" in out
    assert out.endswith("Verified.\n")
    assert "Do they match? [y/N]" in err
    cmds = [cmd for cmd, *_ in fake.sent()]
    assert cmds[0] == "verify.start"
    assert fake.sent()[0][3] == {"user_id": OTHER, "device_id": "PHONE"}
    assert cmds[1:].count("verify.confirm") == 1
    assert cmds[-1] == "verify.show"
    assert "verify.cancel" not in cmds


async def test_interactive_verify_when_the_emoji_differ(
    ctl: Ctl, fake: FakeProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    code, out, _ = await ctl("verify", "interactive", "--user", USER, OTHER)
    assert code == 1
    assert out.endswith("Cancelled: the emoji do not match.\n")
    cmds = [cmd for cmd, *_ in fake.sent()]
    assert "verify.confirm" not in cmds
    assert cmds[-1] == "verify.mismatch"


async def test_interactive_verify_falls_back_to_cancel_without_mismatch(
    tmp_path: Path, fake: FakeProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = fake.table()
    del table["verify.mismatch"]
    server = ControlServer(tmp_path / "old.sock", table)
    await server.start()
    try:
        code = await verify_interactively(tmp_path / "old.sock", USER, None,
                                          VerifyTarget(OTHER), ask=_answer("no"))
    finally:
        await server.close()
    assert code == 1
    assert [cmd for cmd, *_ in fake.sent()][-1] == "verify.cancel"


def _answer(text: str) -> Callable[[str], Awaitable[str]]:
    async def ask(prompt: str) -> str:
        return text

    return ask


async def test_interactive_verify_cancelled_by_the_other_side(
    ctl: Ctl, fake: FakeProxy
) -> None:
    fake.cancel_at_show = 2
    code, out, _ = await ctl("verify", "--user", USER, OTHER)
    assert code == 1
    assert out.endswith("cancelled by the other side: Alice said no (m.user)\n")


async def test_interactive_verify_with_json_prints_each_state(
    ctl: Ctl, fake: FakeProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))
    code, out, err = await ctl("--json", "verify", "--user", USER, OTHER)
    assert code == 0
    states = [json.loads(line) for line in out.splitlines()]
    assert states[0] == {"id": "FLOW1"}
    assert [s["phase"] for s in states[1:]][:2] == ["requested", "keys_exchanged"]
    assert states[-1]["phase"] == "done"
    assert "Verified." in err


async def test_ctrl_c_cancels_the_verification(data_dir: Path, fake: FakeProxy) -> None:
    asked = asyncio.Event()

    async def wait_forever(prompt: str) -> str:
        asked.set()
        await asyncio.Event().wait()
        return ""

    flow = asyncio.create_task(verify_interactively(
        data_dir / "control.sock", USER, "DEV", VerifyTarget(OTHER), ask=wait_forever
    ))
    await asyncio.wait_for(asked.wait(), 5)
    flow.cancel()  # what asyncio.run does on Ctrl-C
    with pytest.raises(asyncio.CancelledError):
        await flow
    assert fake.sent()[-1] == ("verify.cancel", USER, "DEV", {"id": "FLOW1"})


async def test_ctrl_c_in_a_real_process_cancels_the_verification(
    data_dir: Path, fake: FakeProxy
) -> None:
    process = await asyncio.create_subprocess_exec(
        *E2EPROXY, "ctl", "--data-dir", str(data_dir),
        "verify", "--user", USER, OTHER,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=child_env(),
    )
    assert process.stderr is not None
    said = b""
    try:
        while b"Do they match?" not in said:
            chunk = await asyncio.wait_for(process.stderr.read(100), 20)
            assert chunk, said
            said += chunk
        process.send_signal(signal.SIGINT)  # at the question: the loop waits on stdin
        _, err = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 130
    assert b"Cancelled." in err
    assert b"Traceback" not in err
    assert fake.sent()[-1] == ("verify.cancel", USER, None, {"id": "FLOW1"})


async def test_an_error_answer_is_one_line_and_status_1(
    ctl: Ctl, fake: FakeProxy, tmp_path: Path
) -> None:
    wrong = tmp_path / "pw"
    wrong.write_text("guess")
    code, out, err = await ctl("cross-signing", "bootstrap", "--user", USER,
                               "--password-file", str(wrong))
    assert (code, out, err) == (1, "", "e2eproxy: wrong password\n")
    code, out, err = await ctl("--json", "cross-signing", "bootstrap", "--user", USER,
                               "--password-file", str(wrong))
    assert (code, out) == (1, "")
    assert json.loads(err) == {"error": {"code": "homeserver", "message": "wrong password"}}
    assert len(fake.requests) == 2  # a password file is never followed by a prompt


async def test_not_running_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    code = await asyncio.to_thread(cli.main, ["ctl", "--data-dir", str(empty), "ping"])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.startswith("e2eproxy: e2eproxy is not running on this data dir")
    assert str(empty / "control.sock") in err
    assert err.count("\n") == 1
    code = await asyncio.to_thread(
        cli.main, ["ctl", "--data-dir", str(empty), "--json", "devices", "--user", USER])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert json.loads(err)["error"]["code"] == "not_running"


async def test_account_commands_need_a_user(ctl: Ctl, fake: FakeProxy) -> None:
    code, _, err = await ctl("devices")
    assert code == 1
    assert "needs --user" in err
    assert fake.requests == []
