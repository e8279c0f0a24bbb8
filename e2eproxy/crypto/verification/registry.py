"""The verification flows of one account, by flow id: routes each incoming event to its flow,
opens flows for new requests, and applies the spec's rules that span flows (an unknown
transaction is answered; one device starting several flows at once gets them all cancelled).
"""

from __future__ import annotations

from collections.abc import Sequence

from e2eproxy.crypto.clock import Clock
from e2eproxy.crypto.verification import events as ev
from e2eproxy.crypto.verification.events import FlowId, IncomingEvent, Outgoing
from e2eproxy.crypto.verification.flow import LocalDevice, PeerKeys, Verification
from e2eproxy.crypto.verification.requests import (
    from_request,
    from_start,
    request_sent_in_room,
    request_to_device,
)

# Anyone can send us verification requests: the flows others open are capped (per user and in
# all), and only the newest finished flows are kept, so a flood grows neither the flows nor the
# time each event takes (every event looks at every flow).
MAX_OPEN_BY_OTHERS = 32
MAX_OPEN_PER_USER = 4
KEEP_FINISHED = 32


class Verifications:
    """Every flow of one account; the newest finished ones stay (for their result)."""

    def __init__(self, me: LocalDevice, *, keys: PeerKeys, clock: Clock) -> None:
        self.me = me  # replace it when our master key becomes trusted: new flows MAC it
        self._keys, self._clock = keys, clock
        self._flows: dict[FlowId, Verification] = {}

    def get(self, flow_id: FlowId) -> Verification | None:
        return self._flows.get(flow_id)

    def flows(self) -> list[Verification]:
        return list(self._flows.values())

    def add(self, flow: Verification) -> None:
        """Track a flow made directly with ``verification.requests``."""
        if flow.flow_id in self._flows:
            raise ValueError("a flow with this id is already tracked")
        self._track(flow)

    def request_to_device(self, other_user: str, devices: Sequence[str]
                          ) -> tuple[Verification, list[Outgoing]]:
        flow, out = request_to_device(self.me, other_user, devices, keys=self._keys,
                                      clock=self._clock)
        self._track(flow)
        return flow, out

    def request_sent_in_room(self, room_id: str, event_id: str, other_user: str) -> Verification:
        flow = request_sent_in_room(self.me, room_id, event_id, other_user, keys=self._keys,
                                    clock=self._clock)
        self._track(flow)
        return flow

    def _track(self, flow: Verification) -> None:
        self._flows[flow.flow_id] = flow
        finished = [flow_id for flow_id, f in self._flows.items() if f.finished]
        for flow_id in finished[:-KEEP_FINISHED]:
            del self._flows[flow_id]

    def _room_for(self, sender: str) -> bool:
        """Whether a flow ``sender`` opens is taken (else it is ignored, unanswered)."""
        theirs = [f for f in self._flows.values() if not f.finished and not f.we_requested]
        return len(theirs) < MAX_OPEN_BY_OTHERS and (
            sum(f.other_user == sender for f in theirs) < MAX_OPEN_PER_USER
        )

    def receive(self, event: IncomingEvent) -> list[Outgoing]:
        """Feed one verification event (to-device, or in-room with its room and event id)."""
        flow_id = ev.flow_id_of(event)
        if flow_id is None:
            return []
        flow = self._flows.get(flow_id)
        if flow is not None:
            return flow.receive(event)
        if (event.is_request or event.type == ev.START) and not self._room_for(event.sender):
            return []
        if event.is_request:
            new = from_request(self.me, event, keys=self._keys, clock=self._clock)
            if new is None:
                return []
            out: list[Outgoing] = []
        elif event.type == ev.START and not flow_id.in_room:
            made = from_start(self.me, event, keys=self._keys, clock=self._clock)
            if made is None:
                return []
            new, out = made
        else:
            reply = ev.unknown_transaction_reply(event)
            return [reply] if reply is not None else []
        out += self._one_at_a_time(new)
        self._track(new)
        return out

    def _one_at_a_time(self, new: Verification) -> list[Outgoing]:
        """Spec: when the same device starts several verifications, cancel them all."""
        same = [f for f in self._flows.values()
                if not f.finished and not f.we_requested and f.other_user == new.other_user
                and f.other_device == new.other_device]
        if not same:
            return []
        reason = "this device started several verifications at once"
        out = [o for flow in [*same, new] for o in flow.cancel(ev.UNEXPECTED_MESSAGE, reason)]
        return out

    def check_timeouts(self) -> list[Outgoing]:
        return [o for flow in self._flows.values() for o in flow.check_timeout()]

    def next_deadline_ms(self) -> int | None:
        """When ``check_timeouts`` next has something to do (for the shell's timer)."""
        deadlines = [d for f in self._flows.values() if (d := f.deadline_ms) is not None]
        return min(deadlines, default=None)

    def prune(self) -> list[Verification]:
        """Drop finished flows and return them (a late event for one is then unknown)."""
        done = [f for f in self._flows.values() if f.finished]
        for flow in done:
            del self._flows[flow.flow_id]
        return done
