"""`e2eproxy ctl verify --user U @other [DEVICE]`: a whole emoji verification in a terminal.

verify.start, then verify.show every POLL_S until the emoji are there, the question, then
verify.confirm (or verify.mismatch, which cancels it) and verify.show until the flow is done
or cancelled. Ctrl-C cancels the flow on the proxy too. With --json each new state is printed
as a JSON line on stdout, and the words for people go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2eproxy.control import render
from e2eproxy.control.client import ControlConnection, call, connect
from e2eproxy.control.protocol import ControlError, ErrorCode

POLL_S = 0.5
ENDED = ("done", "cancelled")
Ask = Callable[[str], Awaitable[str]]


async def ask_line(prompt: str) -> str:
    """A line from stdin, awaited without blocking the loop, so Ctrl-C still cancels."""
    print(prompt, end="", file=sys.stderr, flush=True)
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return sys.stdin.readline()
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    try:
        loop.add_reader(fd, readable)
    except (OSError, ValueError):  # a regular file cannot be polled, and needs not be
        return sys.stdin.readline()
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    return sys.stdin.readline()


@dataclass(frozen=True)
class VerifyTarget:
    """Whom to verify: a user, one of their devices or all, optionally in a given room."""

    user_id: str
    device_id: str | None = None
    room_id: str | None = None

    def start_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"user_id": self.user_id, "device_id": self.device_id}
        if self.room_id is not None:
            args["room_id"] = self.room_id
        return args


@dataclass
class Flow:
    connection: ControlConnection
    user: str
    device: str | None
    flow_id: str
    json_output: bool

    def say(self, text: str) -> None:
        print(text, file=sys.stderr if self.json_output else sys.stdout, flush=True)

    def state(self, state: Any) -> None:
        if self.json_output:
            print(json.dumps(state, ensure_ascii=False), flush=True)

    async def call(self, cmd: str) -> Any:
        return await self.connection.call(
            cmd, user=self.user, device=self.device, args={"id": self.flow_id}
        )

    async def poll(self, until: Callable[[Mapping[str, Any]], bool]) -> Mapping[str, Any]:
        """verify.show until `until` holds; each new state is shown (--json)."""
        last: Any = None
        while True:
            state = await self.call("verify.show")
            if not isinstance(state, Mapping):
                raise ControlError(ErrorCode.BAD_RESPONSE, "verify.show answered no object")
            if state != last:
                self.state(state)
                last = state
            if until(state):
                return state
            await asyncio.sleep(POLL_S)

    def ended(self, state: Mapping[str, Any]) -> int:
        if state.get("phase") == "done":
            self.say("Verified.")
            return 0
        self.say(render.cancellation(state))
        return 1


async def verify_interactively(
    path: Path,
    user: str,
    device: str | None,
    target: VerifyTarget,
    *,
    json_output: bool = False,
    ask: Ask | None = None,
) -> int:
    """The whole flow; 0 once verified, 1 when cancelled (by either side) or not matching."""
    async with connect(path) as connection:
        started = await connection.call(
            "verify.start", user=user, device=device, args=target.start_args()
        )
        flow_id = started.get("id") if isinstance(started, Mapping) else None
        if not isinstance(flow_id, str):
            raise ControlError(ErrorCode.BAD_RESPONSE, "verify.start answered no id")
        flow = Flow(connection, user, device, flow_id, json_output)
        flow.state(started)
        try:
            return await _follow(flow, target.user_id, ask or ask_line)
        except (asyncio.CancelledError, KeyboardInterrupt):
            # On a connection of its own: this one may be waiting for an answer.
            with contextlib.suppress(ControlError, OSError):
                await call(path, "verify.cancel", user=user, device=device,
                           args={"id": flow_id}, timeout=5)
            print("\nCancelled.", file=sys.stderr)
            raise


async def _follow(flow: Flow, other: str, ask: Ask) -> int:
    flow.say(f"Asked {other} to verify (flow {flow.flow_id}); accept it on their device. "
             "Waiting...")
    state = await flow.poll(lambda s: bool(s.get("emoji")) or s.get("phase") in ENDED)
    if not state.get("emoji"):
        return flow.ended(state)
    flow.say("\n".join(render.sas(state)))
    answer = await ask("Do they match? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        try:
            await flow.call("verify.mismatch")  # the other side then learns why
        except ControlError as exc:
            if exc.code != ErrorCode.UNKNOWN_COMMAND:
                raise
            await flow.call("verify.cancel")
        flow.say("Cancelled: the emoji do not match.")
        return 1
    await flow.call("verify.confirm")
    flow.say("Confirmed. Waiting for the other side...")
    return flow.ended(await flow.poll(lambda s: s.get("phase") in ENDED))
