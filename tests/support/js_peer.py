"""The Rust-crypto peer: matrix-js-sdk with matrix-sdk-crypto (wasm), Element Web's crypto stack.

Each `JsPeer` is one device: a Node 22 process running `tests/interop/js/peer.mjs`, driven over
JSON lines on its stdin/stdout. Its log (the SDK's and rust-sdk's, on stderr) is kept in a file
and quoted in every failure, since that is where rust-sdk says why it rejected something.
The Node runtime and the js packages come from `npm ci --prefix tests/interop/js` (the README's
test command runs it); the lockfile pins them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.plain_client import PlainClient

JS_DIR = Path(__file__).resolve().parents[1] / "interop" / "js"
NODE = JS_DIR / "node_modules" / ".bin" / "node"
SCRIPT = JS_DIR / "peer.mjs"
CALL_TIMEOUT = 60.0
# A Node process reading a line of a few MB (a file as base64) needs more than the default.
LINE_LIMIT = 64 * 1024 * 1024


class JsPeerError(AssertionError):
    """The peer answered with an error, died, or is not installed."""


def ensure_installed() -> None:
    if not NODE.exists() or not (JS_DIR / "node_modules" / "matrix-js-sdk").is_dir():
        raise JsPeerError(
            f"the interop peer is not installed: run `npm ci --prefix {JS_DIR}` "
            "(the README's test command does)"
        )


@dataclass(frozen=True)
class JsEvent:
    """A room event as the js peer sees it, after its own decryption."""

    event_id: str
    room_id: str | None
    sender: str
    type: str
    content: dict[str, Any]
    wire_type: str
    encrypted: bool
    decryption_failure: str | None
    session_id: str | None
    sender_device: str | None
    shield: dict[str, str | None] | None

    @property
    def body(self) -> Any:
        return self.content.get("body")


class JsPeer:
    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self._process = process
        self.log_path = log_path
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader = asyncio.create_task(self._read())
        self.user_id = ""
        self.device_id = ""
        self.access_token = ""
        self.ed25519 = ""

    @classmethod
    async def start(cls, log_path: Path) -> JsPeer:
        ensure_installed()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                str(NODE), str(SCRIPT), cwd=JS_DIR, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=log, limit=LINE_LIMIT,
            )
        return cls(process, log_path)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def _read(self) -> None:
        assert self._process.stdout is not None
        while line := await self._process.stdout.readline():
            message = json.loads(line)
            future = self._pending.pop(message.get("id"), None)
            if future is None or future.done():
                continue
            if message.get("ok"):
                future.set_result(message.get("result"))
            else:
                future.set_exception(JsPeerError(f"{message.get('error')}\n--- peer log ---\n"
                                                 f"{self.log_tail()}"))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(JsPeerError(f"the peer exited\n{self.log_tail()}"))
        self._pending.clear()

    async def call(self, cmd: str, timeout: float = CALL_TIMEOUT, **args: Any) -> Any:
        assert self._process.stdin is not None
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        line = json.dumps({"id": request_id, "cmd": cmd, "args": args}) + "\n"
        self._process.stdin.write(line.encode())
        await self._process.stdin.drain()
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise JsPeerError(f"{cmd}: no answer in {timeout} s\n{self.log_tail()}") from None

    async def close(self) -> None:
        if self._process.returncode is None:
            with contextlib.suppress(JsPeerError, ConnectionError, OSError):
                await self.call("shutdown", timeout=5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._process.wait(), 5)
        if self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    # -- the commands ------------------------------------------------------------------------

    async def login(self, base_url: str, user: str, password: str, device_name: str) -> None:
        answer = await self.call("login", base_url=base_url, user=user, password=password,
                                 device_name=device_name)
        self.user_id, self.device_id = answer["user_id"], answer["device_id"]
        self.access_token, self.ed25519 = answer["access_token"], answer["ed25519"]

    async def create_encrypted_room(self, invite: list[str], **options: Any) -> str:
        answer = await self.call("create_room", invite=invite, **options)
        return str(answer["room_id"])

    async def join(self, room_id: str) -> None:
        await self.call("join", room_id=room_id)

    async def invite(self, room_id: str, user_id: str) -> None:
        await self.call("invite", room_id=room_id, user_id=user_id)

    async def wait_for_member(self, room_id: str, user_id: str, membership: str = "join") -> None:
        await self.call("wait_for_member", room_id=room_id, user_id=user_id,
                        membership=membership)

    async def send(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        answer = await self.call("send", room_id=room_id, type=event_type, content=content)
        return str(answer["event_id"])

    async def send_text(self, room_id: str, body: str) -> str:
        return await self.send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})

    async def wait_for_event(self, room_id: str, *, event_id: str | None = None,
                             body: str | None = None, timeout_ms: int = 20_000) -> JsEvent:
        """The event once decrypted; the failure if it stays undecryptable (test asserts)."""
        args: dict[str, Any] = {"room_id": room_id, "timeout_ms": timeout_ms}
        if event_id is not None:
            args["event_id"] = event_id
        if body is not None:
            args["body"] = body
        answer = await self.call("wait_for_event", timeout=timeout_ms / 1000 + 10, **args)
        return JsEvent(**answer)

    async def wait_for_text(self, room_id: str, event_id: str, body: str) -> JsEvent:
        """The event, asserted to be decrypted to `body`; the peer's log on failure."""
        event = await self.wait_for_event(room_id, event_id=event_id)
        if event.decryption_failure is not None or event.body != body:
            raise JsPeerError(f"{self.user_id}/{self.device_id} got {event}\n{self.log_tail()}")
        return event

    async def messages(self, room_id: str, limit: int = 50) -> list[JsEvent]:
        answer = await self.call("messages", room_id=room_id, limit=limit)
        return [JsEvent(**event) for event in answer["events"]]

    async def history(self, room_id: str, page: int = 100) -> list[JsEvent]:
        """The room's whole history from the server's /messages, newest first, each event
        decrypted by the peer (a page at a time)."""
        events: list[JsEvent] = []
        start: str | None = None
        while True:
            where: dict[str, Any] = {"from": start}  # a Python keyword, so passed this way
            answer = await self.call("messages", room_id=room_id, limit=page, **where)
            events.extend(JsEvent(**event) for event in answer["events"])
            start = answer["end"]
            if start is None:
                return events

    async def upload_file(self, data: bytes, mimetype: str, name: str) -> dict[str, Any]:
        """Encrypt with matrix-encrypt-attachment (Element's) and upload; the `file` object."""
        answer = await self.call("upload_file", data_b64=base64.b64encode(data).decode(),
                                 mimetype=mimetype, name=name)
        return dict(answer["file"])

    async def download_file(self, file: dict[str, Any]) -> bytes:
        answer = await self.call("download_file", file=file)
        return base64.b64decode(answer["data_b64"])

    async def device_ids(self, user_id: str) -> list[str]:
        answer = await self.call("device_ids", user_id=user_id)
        return list(answer["device_ids"])

    # -- cross-signing and verification -------------------------------------------------------

    async def bootstrap_cross_signing(self, *, reset: bool = False) -> None:
        answer = await self.call("bootstrap_cross_signing", reset=reset)
        assert answer["ready"], answer

    async def set_isolation(self, mode: str) -> None:
        """"only_signed" (MSC4153: share only with devices their owner signed) or "all"."""
        await self.call("set_isolation", mode=mode)

    async def verification_status(self, user_id: str, device_id: str | None = None
                                  ) -> dict[str, Any]:
        return dict(await self.call("verification_status", user_id=user_id,
                                    device_id=device_id))

    async def request_verification(self, user_id: str, *, device_id: str | None = None,
                                   room_id: str | None = None) -> str:
        answer = await self.call("request_verification", user_id=user_id, device_id=device_id,
                                 room_id=room_id)
        return str(answer["id"])

    async def verifications(self) -> list[dict[str, Any]]:
        return list(await self.call("list_verifications"))

    async def wait_verification(self, flow_id: str, phase: str) -> dict[str, Any]:
        """Until the flow reaches `phase` (a VerificationPhase name) or is cancelled."""
        return dict(await self.call("wait_verification", id=flow_id, phase=phase, timeout=40))

    async def accept_verification(self, flow_id: str) -> None:
        await self.call("accept_verification", id=flow_id)

    async def start_sas(self, flow_id: str) -> None:
        await self.call("start_sas", id=flow_id)

    async def wait_sas(self, flow_id: str) -> tuple[list[list[str]], list[int]]:
        answer = await self.call("wait_sas", id=flow_id, timeout=40)
        return [list(e) for e in answer["emoji"]], list(answer["decimals"])

    async def confirm_sas(self, flow_id: str, *, match: bool = True) -> None:
        await self.call("confirm_sas", id=flow_id, match=match)


    # -- secret storage and key backup --------------------------------------------------------

    async def setup_recovery(self, passphrase: str | None = None) -> dict[str, Any]:
        """Element's "set up recovery": cross-signing, secret storage, a key backup. Returns
        the recovery key and the backup version."""
        return dict(await self.call("setup_recovery", passphrase=passphrase))

    async def restore_from_backup(self, recovery_key: str) -> dict[str, Any]:
        """Open secret storage with the recovery key, take the backup key, restore it all."""
        return dict(await self.call("restore_from_backup", recovery_key=recovery_key,
                                    timeout=90))

    async def redecrypt(self, room_id: str) -> None:
        await self.call("redecrypt", room_id=room_id)


# -- a plain client behind the proxy, beside a js peer ------------------------------------------
# What the proxy adds to a decrypted event's unsigned section.
ENCRYPTION_INFO = "org.e2eproxy.encryption"
READ_DEADLINE = 20.0


def _is_notice(event: dict[str, Any]) -> bool:
    return bool(event.get("content", {}).get("org.e2eproxy.undecryptable"))


async def plain_reads(plain: PlainClient, room_id: str, event_id: str, body: str,
                      peer: JsPeer) -> dict[str, Any]:
    """The plain client gets `event_id` decrypted to `body`, from `peer`'s device: first from
    its /sync, and if the key was late, from /event (the proxy decrypts again)."""
    event = await plain.wait_for_event(room_id, event_id, deadline_s=READ_DEADLINE)
    deadline = time.monotonic() + READ_DEADLINE
    while _is_notice(event) and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        event = await plain.event(room_id, event_id)
    assert event["type"] == "m.room.message", f"not decrypted for the plain client: {event}"
    assert event["content"]["body"] == body, event
    assert event["sender"] == peer.user_id, event
    info = event["unsigned"][ENCRYPTION_INFO]
    assert info["sender_device"] == peer.device_id, info
    assert info["verification"] not in ("mismatched_sender", "unknown_device"), info
    return event


async def js_room_with_plain(js: JsPeer, plain: PlainClient, **options: Any) -> str:
    """A js peer's new encrypted room; the plain client joins once its /sync shows the invite."""
    room_id = await js.create_encrypted_room([plain.user_id], **options)
    await plain.sync_until(lambda: any(
        room_id in body.get("rooms", {}).get("invite", {}) for body in plain.sync_bodies
    ), "the invite", deadline_s=READ_DEADLINE)
    await plain.join(room_id)
    await js.wait_for_member(room_id, plain.user_id)
    return room_id
