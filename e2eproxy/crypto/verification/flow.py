"""One verification flow (spec "Key verification framework" + SAS) as a sans-I/O state machine.

The engine feeds it incoming events (``receive``) and the user's actions (``accept``,
``start_sas``, ``confirm``, ``mismatch``, ``cancel``); each call returns the events to send
(``Outgoing``) and leaves a clear ``phase``. Time comes from the injected clock;
``check_timeout`` cancels a flow past its deadline (``deadline_ms`` says when to call it).

Phases: REQUESTED (request sent or received) -> READY -> STARTED (start sent or received, the
accept and keys in progress) -> KEYS_EXCHANGED (the short string can be shown) -> CONFIRMED
(our user said it matches; our MAC is sent) -> DONE, or CANCELLED from anywhere. ``result``
holds the keys the other side's MAC confirmed once DONE.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from e2eproxy.crypto.clock import Clock
from e2eproxy.crypto.verification import events as ev
from e2eproxy.crypto.verification.emoji import Emoji
from e2eproxy.crypto.verification.events import (
    Cancellation,
    FlowId,
    IncomingEvent,
    Outgoing,
    VerifiedKeys,
)
from e2eproxy.crypto.verification.sas import (
    DECIMAL,
    EMOJI,
    Party,
    SasCancel,
    SasExchange,
    start_fields,
)
from e2eproxy.errors import LocalProtocolError

FLOW_TIMEOUT_MS = 10 * 60_000  # spec: a verification that does not finish in 10 min times out
REQUEST_PROMPT_MS = 2 * 60_000  # spec: an unanswered request is dropped 2 min after receipt
REQUEST_MAX_FUTURE_MS = 5 * 60_000  # spec: ignore a request more than 5 min in the future
EVENT_TIMEOUT_MS = 60_000  # rust-sdk's MAX_EVENT_TIMEOUT, while the peer's answer is automatic


class Phase(enum.Enum):
    REQUESTED = "requested"
    READY = "ready"
    STARTED = "started"
    KEYS_EXCHANGED = "keys_exchanged"
    CONFIRMED = "confirmed"
    DONE = "done"
    CANCELLED = "cancelled"


class InvalidAction(LocalProtocolError):
    """A user action that does not fit the flow's phase; nothing was sent or changed."""


@dataclass(frozen=True, slots=True)
class LocalDevice:
    """Us. ``master_key`` is our MSK, MACed to the other side when we vouch for it."""

    user_id: str
    device_id: str
    ed25519: str
    master_key: str | None = None


class PeerKeys(Protocol):
    """The other side's keys as the device tracker knows them (read once, when SAS starts)."""

    def device_ed25519(self, user_id: str, device_id: str) -> str | None: ...

    def master_key(self, user_id: str) -> str | None: ...


class Verification:
    """One flow with one other device (to-device) or another user (in a room)."""

    def __init__(self, me: LocalDevice, flow: FlowId, other_user: str, *, keys: PeerKeys,
                 clock: Clock, we_requested: bool, other_device: str | None = None,
                 devices: Sequence[str] = (), request_ts: int | None = None,
                 their_methods: Sequence[str] = ev.METHODS, expects_done: bool = True) -> None:
        """Made by ``verification.requests``: ``devices`` are those a to-device request went
        to, ``request_ts`` is an incoming request's timestamp."""
        if flow.in_room and other_user == me.user_id:
            raise ValueError("a user verifies their own devices to-device, not in a room")
        self.me, self.flow_id, self.other_user = me, flow, other_user
        self.other_device = other_device
        self.we_requested = we_requested
        self.phase = Phase.REQUESTED
        self.cancellation: Cancellation | None = None
        self.result: VerifiedKeys | None = None
        self._keys, self._clock = keys, clock
        self._devices = [d for d in devices if d != me.device_id or other_user != me.user_id]
        self._created = self._last = clock.now_ms()
        self._request_ts = request_ts
        self._their_methods = [m for m in their_methods if isinstance(m, str)]
        self._sas: SasExchange | None = None
        self._fixed: tuple[str | None, str | None] = (None, None)  # device key, master key
        self._expects_done = expects_done  # a start without a request (deprecated) has none
        self._pending_accept: dict[str, Any] | None = None  # such a start waits for our user
        self._their_mac: VerifiedKeys | None = None
        self._done_sent = False

    def _take_bare_start(self, content: Mapping[str, Any]) -> list[Outgoing]:
        """A to-device start that came without a request: it waits for our user's accept."""
        try:
            self._pending_accept = self._begin_sas().receive_start(content)
        except SasCancel as exc:
            return self._cancel(exc.code, exc.reason)
        self.phase = Phase.STARTED
        return []

    # -- state ----------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.phase in (Phase.DONE, Phase.CANCELLED)

    @property
    def requested_devices(self) -> tuple[str, ...]:
        return tuple(self._devices)

    @property
    def we_started(self) -> bool:
        return self._sas is not None and self._sas.we_started

    @property
    def sas_methods(self) -> tuple[str, ...]:
        protocols = self._sas.protocols if self._sas else None
        return protocols.sas if protocols else ()

    def emoji(self) -> tuple[Emoji, ...] | None:
        if self._sas is None or not self._sas.established or EMOJI not in self.sas_methods:
            return None
        return self._sas.emoji()

    def decimals(self) -> tuple[int, int, int] | None:
        if self._sas is None or not self._sas.established or DECIMAL not in self.sas_methods:
            return None
        return self._sas.decimals()

    @property
    def deadline_ms(self) -> int | None:
        """When ``check_timeout`` would cancel, or ``None`` once finished."""
        if self.finished:
            return None
        deadline = self._created + FLOW_TIMEOUT_MS
        if self.phase is Phase.REQUESTED and not self.we_requested and self._request_ts:
            deadline = min(deadline, self._request_ts + FLOW_TIMEOUT_MS,
                           self._created + REQUEST_PROMPT_MS)
        if self._waiting_on_peer():
            deadline = min(deadline, self._last + EVENT_TIMEOUT_MS)
        return deadline

    def _waiting_on_peer(self) -> bool:
        """The peer's next message needs no human (an accept, a key, a done)."""
        if self.phase is Phase.STARTED:
            return self._pending_accept is None
        return self.phase is Phase.CONFIRMED and self._done_sent

    # -- user actions ---------------------------------------------------------------------
    def accept(self) -> list[Outgoing]:
        """Say yes: to an incoming request (ready), or to a start that came without one."""
        if (expired := self._expire()) is not None:
            return expired
        if self.phase is Phase.REQUESTED and not self.we_requested:
            if ev.SAS_V1 not in self._their_methods:
                raise InvalidAction("the request offers no method we support; cancel it")
            self.phase, self._last = Phase.READY, self._clock.now_ms()
            return self._send(ev.READY, {"from_device": self.me.device_id,
                                         "methods": list(ev.METHODS)})
        if self.phase is Phase.STARTED and self._pending_accept is not None:
            fields, self._pending_accept = self._pending_accept, None
            self._last = self._clock.now_ms()
            return self._send(ev.ACCEPT, fields)
        raise InvalidAction(f"nothing to accept in phase {self.phase.value}")

    def start_sas(self) -> list[Outgoing]:
        """Begin SAS once the request is ready (either side may)."""
        if (expired := self._expire()) is not None:
            return expired
        if self.phase is not Phase.READY:
            raise InvalidAction(f"SAS starts from a ready request, not {self.phase.value}")
        try:
            sas = self._begin_sas()
        except SasCancel as exc:
            return self._cancel(exc.code, exc.reason)
        content = ev.with_flow(self.flow_id, start_fields(self.me.device_id))
        sas.we_start(content)
        self.phase, self._last = Phase.STARTED, self._clock.now_ms()
        return [self._address(ev.START, content)]

    def confirm(self) -> list[Outgoing]:
        """Our user says the short strings match: send our MAC (and done if theirs checked)."""
        if (expired := self._expire()) is not None:
            return expired
        if self.phase is not Phase.KEYS_EXCHANGED or self._sas is None:
            raise InvalidAction(f"nothing to confirm in phase {self.phase.value}")
        self.phase = Phase.CONFIRMED
        out = self._send(ev.MAC, self._sas.mac_fields(self.me.ed25519, self.me.master_key))
        return out + self._finish_if_ready()

    def mismatch(self) -> list[Outgoing]:
        """Our user says the short strings differ."""
        if self.phase is not Phase.KEYS_EXCHANGED:
            raise InvalidAction(f"nothing to compare in phase {self.phase.value}")
        return self._cancel(ev.MISMATCHED_SAS, "the short authentication strings differ")

    def cancel(self, code: str = ev.USER, reason: str = "cancelled by the user") -> list[Outgoing]:
        return [] if self.finished else self._cancel(code, reason)

    def _expire(self) -> list[Outgoing] | None:
        """The timeout's cancel if an unfinished flow is past its deadline, else ``None``."""
        if self.finished:
            return None
        out = self.check_timeout()
        return out if self.finished else None

    def check_timeout(self) -> list[Outgoing]:
        deadline = self.deadline_ms
        if deadline is None or self._clock.now_ms() < deadline:
            return []
        if self.phase is Phase.REQUESTED and not self.we_requested:
            # An unanswered prompt is just dropped (spec); the requester times out on its own.
            self._cancelled(ev.TIMEOUT, "the request was not answered in time", by_us=True)
            return []
        return self._cancel(ev.TIMEOUT, "the verification timed out")

    # -- incoming -------------------------------------------------------------------------
    def receive(self, event: IncomingEvent) -> list[Outgoing]:
        if self.finished or ev.flow_id_of(event) != self.flow_id:
            return []
        if event.type != ev.CANCEL and (expired := self._expire()) is not None:
            return expired
        refusal = self._refuse_sender(event)
        if refusal is not None:
            return refusal
        handler = _HANDLERS.get(event.type)
        if handler is None:
            return []  # a repeated request, or not a verification event
        try:
            out = handler(self, event)
        except SasCancel as exc:
            return self._cancel(exc.code, exc.reason)
        self._last = self._clock.now_ms()
        return out

    def _refuse_sender(self, event: IncomingEvent) -> list[Outgoing] | None:
        """``None`` when ``event`` may drive the flow; else what to answer (maybe nothing)."""
        device = event.from_device
        if event.sender == self.me.user_id and device == self.me.device_id:
            return []  # our own event, echoed back
        if event.sender != self.other_user:
            if not self.flow_id.in_room:
                return self._cancel(ev.USER_MISMATCH, "an event of this flow is from another user")
            if event.sender == self.me.user_id:
                return self._own_other_device(event)
            return []  # spec: in a room, only the request's two users count
        if self.other_device is None or device is None or device == self.other_device:
            return None
        if event.type == ev.READY and not self.flow_id.in_room:
            # Another of the devices we asked: the request was taken elsewhere.
            reason = "the request was accepted on another device"
            return [Outgoing(ev.CANCEL, ev.cancel_content(self.flow_id, ev.ACCEPTED, reason),
                             event.sender, device)]
        return []

    def _own_other_device(self, event: IncomingEvent) -> list[Outgoing]:
        """In a room, another device of ours answered the request made to us."""
        if self.phase is Phase.REQUESTED and not self.we_requested:
            if event.type == ev.READY:
                self._cancelled(ev.ACCEPTED, "accepted on another of our devices", by_us=False)
            elif event.type == ev.CANCEL:
                self._cancelled(_text(event.content, "code", ev.USER),
                                "declined on another of our devices", by_us=False)
        return []

    def _on_ready(self, event: IncomingEvent) -> list[Outgoing]:
        methods, device = event.content.get("methods"), event.content.get("from_device")
        if self.phase is not Phase.REQUESTED or not self.we_requested:
            raise SasCancel(ev.UNEXPECTED_MESSAGE, "unexpected ready")
        if not isinstance(device, str) or not isinstance(methods, list):
            raise SasCancel(ev.INVALID_MESSAGE, "the ready lacks from_device or methods")
        if self._devices and "*" not in self._devices and device not in self._devices:
            return []  # not one of the devices we asked
        self.other_device, self.phase = device, Phase.READY
        self._their_methods = [m for m in methods if isinstance(m, str)]
        out = self._tell_other_devices(ev.ACCEPTED, "the request was accepted on another device")
        if ev.SAS_V1 not in self._their_methods:
            return out + self._cancel(ev.UNKNOWN_METHOD, "the ready offers no method we support")
        return out

    def _on_start(self, event: IncomingEvent) -> list[Outgoing]:
        if self.phase is Phase.STARTED and self._sas and self._sas.we_started \
                and self._sas.protocols is None:
            # Both sent a start: the smaller (user id, device id) side's start counts.
            if event.content.get("method") != ev.SAS_V1:
                raise SasCancel(ev.UNEXPECTED_MESSAGE, "both sides started, with different methods")
            if (self.me.user_id, self.me.device_id) < (self.other_user, self.other_device or ""):
                return []
            return self._send(ev.ACCEPT, self._sas.receive_start(event.content))
        if self.phase is not Phase.READY:
            raise SasCancel(ev.UNEXPECTED_MESSAGE, f"unexpected start in phase {self.phase.value}")
        accept = self._begin_sas().receive_start(event.content)
        self.phase = Phase.STARTED
        return self._send(ev.ACCEPT, accept)

    def _on_accept(self, event: IncomingEvent) -> list[Outgoing]:
        sas = self._sas
        if self.phase is not Phase.STARTED or sas is None or not sas.we_started \
                or sas.protocols is not None:
            raise SasCancel(ev.UNEXPECTED_MESSAGE, "unexpected accept")
        return self._send(ev.KEY, sas.receive_accept(event.content))

    def _on_key(self, event: IncomingEvent) -> list[Outgoing]:
        sas = self._sas
        if (self.phase is not Phase.STARTED or sas is None or sas.protocols is None
                or self._pending_accept is not None):
            raise SasCancel(ev.UNEXPECTED_MESSAGE, "unexpected key")
        reply = sas.receive_key(event.content)
        self.phase = Phase.KEYS_EXCHANGED
        return self._send(ev.KEY, reply) if reply is not None else []

    def _on_mac(self, event: IncomingEvent) -> list[Outgoing]:
        if self.phase not in (Phase.KEYS_EXCHANGED, Phase.CONFIRMED) or self._sas is None \
                or self._their_mac is not None:
            raise SasCancel(ev.UNEXPECTED_MESSAGE, "unexpected mac")
        self._their_mac = self._sas.check_mac(event.content, *self._fixed)
        return self._finish_if_ready()

    def _on_done(self, event: IncomingEvent) -> list[Outgoing]:
        if self.phase is not Phase.CONFIRMED or not self._done_sent:
            raise SasCancel(ev.UNEXPECTED_MESSAGE, "unexpected done")
        self.phase, self.result = Phase.DONE, self._their_mac
        return []

    def _on_cancel(self, event: IncomingEvent) -> list[Outgoing]:
        self._cancelled(_text(event.content, "code", ev.USER),
                        _text(event.content, "reason", ""), by_us=False)
        if self.other_device is None and not self.flow_id.in_room:
            # Declined on one device: tell the others we asked (spec).
            return [o for o in self._cancel_outgoing(ev.USER, "the request was declined")
                    if o.device_id != event.from_device]
        return []

    # -- helpers --------------------------------------------------------------------------
    def _begin_sas(self) -> SasExchange:
        """Fix the other side's keys now (spec: they must not change during the flow)."""
        device = self.other_device
        if device is None:
            raise SasCancel(ev.UNEXPECTED_MESSAGE, "no device to verify yet")
        device_key = self._keys.device_ed25519(self.other_user, device)
        master = self._keys.master_key(self.other_user)
        if device_key is None:
            raise SasCancel(ev.KEY_MISMATCH, "the other device's keys are not known")
        if master is not None and device == master:
            raise SasCancel(ev.KEY_MISMATCH, "a device id equals the user's master key")
        self._fixed = (device_key, master)
        self._sas = SasExchange(Party(self.me.user_id, self.me.device_id),
                                Party(self.other_user, device), self.flow_id.id)
        return self._sas

    def _finish_if_ready(self) -> list[Outgoing]:
        if self.phase is not Phase.CONFIRMED or self._their_mac is None or self._done_sent:
            return []
        if not self._expects_done:
            self.phase, self.result = Phase.DONE, self._their_mac
            return []
        self._done_sent = True
        return self._send(ev.DONE, {})

    def _address(self, type_: str, content: Mapping[str, Any]) -> Outgoing:
        if self.flow_id.in_room:
            return Outgoing(type_, dict(content), room_id=self.flow_id.room_id)
        return Outgoing(type_, dict(content), self.other_user, self.other_device)

    def _send(self, type_: str, fields: Mapping[str, Any]) -> list[Outgoing]:
        return [self._address(type_, ev.with_flow(self.flow_id, fields))]

    def _tell_other_devices(self, code: str, reason: str) -> list[Outgoing]:
        content = ev.cancel_content(self.flow_id, code, reason)
        return [Outgoing(ev.CANCEL, dict(content), self.other_user, d) for d in self._devices
                if d not in ("*", self.other_device)]

    def _cancelled(self, code: str, reason: str, *, by_us: bool) -> None:
        self.phase, self.cancellation = Phase.CANCELLED, Cancellation(code, reason, by_us)

    def _cancel_outgoing(self, code: str, reason: str) -> list[Outgoing]:
        if self.flow_id.in_room or self.other_device is not None:
            return self._send(ev.CANCEL, {"code": code, "reason": reason})
        return self._tell_other_devices(code, reason)

    def _cancel(self, code: str, reason: str) -> list[Outgoing]:
        self._cancelled(code, reason, by_us=True)
        return self._cancel_outgoing(code, reason)


def _text(content: Mapping[str, Any], name: str, default: str) -> str:
    value = content.get(name)
    return value if isinstance(value, str) else default


_HANDLERS = {
    ev.READY: Verification._on_ready,
    ev.START: Verification._on_start,
    ev.ACCEPT: Verification._on_accept,
    ev.KEY: Verification._on_key,
    ev.MAC: Verification._on_mac,
    ev.DONE: Verification._on_done,
    ev.CANCEL: Verification._on_cancel,
}
