"""Verification flows: two (or more) engines' registries wired by a fake in-memory router.

The router plays the homeserver: to-device events go to the named device (or all of a user's
devices for ``*``) as plaintext, so no sender device is known; room events go to every device in
the room, the sender's own included (echoes), with an event id and timestamp. Time only moves
through the ManualClock.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import vodozemac

from e2eproxy.crypto.clock import ManualClock
from e2eproxy.crypto.verification import events as ev
from e2eproxy.crypto.verification import sas as sas_module
from e2eproxy.crypto.verification.events import FlowId, IncomingEvent, Outgoing
from e2eproxy.crypto.verification.flow import (
    EVENT_TIMEOUT_MS,
    FLOW_TIMEOUT_MS,
    REQUEST_PROMPT_MS,
    InvalidAction,
    LocalDevice,
    Phase,
    Verification,
)
from e2eproxy.crypto.verification.registry import Verifications
from e2eproxy.crypto.verification.requests import room_request_content

ALICE, BOB, CAROL = "@alice:example.org", "@bob:example.org", "@carol:example.org"
ROOM = "!dm:example.org"

Mutator = Callable[[IncomingEvent], IncomingEvent | None]  # None drops the event


class Directory:
    """What every device's tracker knows: device Ed25519 keys and master keys (PeerKeys)."""

    def __init__(self) -> None:
        self.devices: dict[tuple[str, str], str] = {}
        self.masters: dict[str, str] = {}

    def device_ed25519(self, user_id: str, device_id: str) -> str | None:
        return self.devices.get((user_id, device_id))

    def master_key(self, user_id: str) -> str | None:
        return self.masters.get(user_id)


@dataclass
class Node:
    me: LocalDevice
    reg: Verifications
    rooms: set[str] = field(default_factory=set)
    received: list[IncomingEvent] = field(default_factory=list)

    def flow(self) -> Verification:
        (flow,) = self.reg.flows()
        return flow


class Router:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.keys = Directory()
        self.nodes: list[Node] = []
        self.queue: list[tuple[Node, Outgoing]] = []
        self.sent: list[tuple[Node, Outgoing]] = []
        self.mutate: Mutator | None = None
        self._ids = itertools.count()

    def add(self, user: str, device: str, *, master: bool = False, rooms: tuple[str, ...] = ()
            ) -> Node:
        ed25519 = vodozemac.Account().ed25519_key.to_base64()
        self.keys.devices[(user, device)] = ed25519
        master_key = None
        if master:
            master_key = self.keys.masters.setdefault(
                user, vodozemac.Account().ed25519_key.to_base64())
        me = LocalDevice(user, device, ed25519, master_key)
        node = Node(me, Verifications(me, keys=self.keys, clock=self.clock), set(rooms))
        self.nodes.append(node)
        return node

    def send(self, sender: Node, out: list[Outgoing]) -> None:
        self.queue += [(sender, o) for o in out]

    def room_request(self, sender: Node, other_user: str) -> Verification:
        """Send an in-room request; the flow is made once the 'server' gives the event id."""
        event_id = self._enqueue_room(sender, ev.ROOM_MESSAGE,
                                      room_request_content(sender.me, other_user))
        return sender.reg.request_sent_in_room(ROOM, event_id, other_user)

    def _enqueue_room(self, sender: Node, type_: str, content: dict[str, Any]) -> str:
        event_id = f"$event{next(self._ids)}"
        self.queue.append((sender, Outgoing(type_, content, room_id=ROOM, device_id=event_id)))
        return event_id

    def _events(self, sender: Node, out: Outgoing) -> list[tuple[Node, IncomingEvent]]:
        content = copy.deepcopy(out.content)  # as over the wire: nobody shares the dict
        if out.room_id is not None:
            # An outgoing room event carries its event id in device_id only when made above.
            event_id = out.device_id if out.type == ev.ROOM_MESSAGE else f"$event{next(self._ids)}"
            incoming = IncomingEvent(out.type, content, sender.me.user_id, room_id=out.room_id,
                                     event_id=event_id, origin_server_ts=self.clock.now_ms())
            return [(n, incoming) for n in self.nodes if out.room_id in n.rooms]
        incoming = IncomingEvent(out.type, content, sender.me.user_id)
        return [(n, incoming) for n in self.nodes if n.me.user_id == out.user_id
                and out.device_id in ("*", n.me.device_id)]

    def flush(self, limit: int = 200) -> None:
        """Deliver everything queued, and what the deliveries send, until quiet."""
        for _ in range(limit):
            if not self.queue:
                return
            sender, out = self.queue.pop(0)
            self.sent.append((sender, out))
            for node, incoming in self._events(sender, out):
                if self.mutate is not None:
                    changed = self.mutate(incoming)
                    if changed is None:
                        continue
                    incoming = changed
                node.received.append(incoming)
                self.send(node, node.reg.receive(incoming))
        raise AssertionError("the router never went quiet (an error loop?)")

    def sent_by(self, node: Node, type_: str | None = None) -> list[Outgoing]:
        return [o for n, o in self.sent if n is node and (type_ is None or o.type == type_)]


def _phases(*flows: Verification) -> set[Phase]:
    return {flow.phase for flow in flows}


def _emoji_names(flow: Verification) -> list[str]:
    emoji = flow.emoji()
    assert emoji is not None
    return [e.description for e in emoji]


def _to_device_pair(router: Router, *, master: bool = False) -> tuple[Node, Node]:
    a, b = router.add(ALICE, "PHONE", master=master), router.add(ALICE, "LAPTOP", master=master)
    _, out = a.reg.request_to_device(ALICE, ["LAPTOP"])
    router.send(a, out)
    router.flush()
    return a, b


def _room_pair(router: Router, *, master: bool = True) -> tuple[Node, Node, Verification]:
    a = router.add(ALICE, "APHONE", master=master, rooms=(ROOM,))
    b = router.add(BOB, "BPHONE", master=master, rooms=(ROOM,))
    flow = router.room_request(a, BOB)
    router.flush()
    return a, b, flow


def _to_sas(router: Router, a: Node, b: Node) -> None:
    router.send(b, b.flow().accept())
    router.flush()
    router.send(a, a.flow().start_sas())
    router.flush()


def _finish(router: Router, a: Node, b: Node) -> None:
    router.send(a, a.flow().confirm())
    router.flush()
    router.send(b, b.flow().confirm())
    router.flush()


# --- complete flows --------------------------------------------------------------------------


def test_to_device_self_verification_completes() -> None:
    router = Router()
    a, b = _to_device_pair(router, master=True)
    assert b.flow().phase is Phase.REQUESTED and not b.flow().we_requested
    _to_sas(router, a, b)
    fa, fb = a.flow(), b.flow()
    assert _phases(fa, fb) == {Phase.KEYS_EXCHANGED}
    assert fa.we_started and not fb.we_started
    assert _emoji_names(fa) == _emoji_names(fb) and len(_emoji_names(fa)) == 7
    assert fa.decimals() == fb.decimals() is not None
    _finish(router, a, b)
    assert _phases(fa, fb) == {Phase.DONE}
    assert fa.result is not None and fb.result is not None
    assert fa.result.device_ed25519 == router.keys.devices[(ALICE, "LAPTOP")]
    assert fb.result.device_ed25519 == router.keys.devices[(ALICE, "PHONE")]
    # Both devices vouch for the (shared) master key of their user.
    assert fa.result.master_key == fb.result.master_key == router.keys.masters[ALICE]
    assert [o.type for o in router.sent_by(a)] == [
        ev.REQUEST, ev.START, ev.KEY, ev.MAC, ev.DONE]
    assert [o.type for o in router.sent_by(b)] == [
        ev.READY, ev.ACCEPT, ev.KEY, ev.MAC, ev.DONE]
    assert all(o.content["transaction_id"] == fa.flow_id.id for _, o in router.sent)
    assert fa.deadline_ms is None and fa.check_timeout() == []


def test_in_room_verification_completes_with_master_keys_and_echoes() -> None:
    router = Router()
    a, b, flow = _room_pair(router)
    assert flow.flow_id.in_room and b.flow().flow_id == flow.flow_id
    _to_sas(router, a, b)
    assert _emoji_names(a.flow()) == _emoji_names(b.flow())
    _finish(router, a, b)
    fa, fb = a.flow(), b.flow()
    assert _phases(fa, fb) == {Phase.DONE}
    assert fa.result is not None and fa.result.master_key == router.keys.masters[BOB]
    assert fa.result.device_ed25519 == router.keys.devices[(BOB, "BPHONE")]
    assert fb.result is not None and fb.result.master_key == router.keys.masters[ALICE]
    for _, out in router.sent:
        assert out.room_id == ROOM and "transaction_id" not in out.content
        if out.type != ev.ROOM_MESSAGE:
            assert out.content["m.relates_to"] == {"rel_type": "m.reference",
                                                   "event_id": flow.flow_id.id}
    # Every event came back to its sender too, and none drew an answer.
    assert {e.type for e in a.received if e.sender == ALICE} == {
        ev.ROOM_MESSAGE, ev.START, ev.KEY, ev.MAC, ev.DONE}
    assert [o.type for o in router.sent_by(a)] == [
        ev.ROOM_MESSAGE, ev.START, ev.KEY, ev.MAC, ev.DONE]
    assert [o.type for o in router.sent_by(b)] == [
        ev.READY, ev.ACCEPT, ev.KEY, ev.MAC, ev.DONE]


def test_in_room_request_accepted_on_another_of_our_devices() -> None:
    router = Router()
    a, b, _ = _room_pair(router)
    b2 = router.add(BOB, "BLAPTOP", master=True, rooms=(ROOM,))
    # b2 joined late: give it the request as well, then b accepts.
    request = next(e for e in b.received if e.is_request)
    b2.reg.receive(request)
    router.send(b, b.flow().accept())
    router.flush()
    assert b2.flow().phase is Phase.CANCELLED
    assert b2.flow().cancellation == ev.Cancellation(ev.ACCEPTED,
                                                      "accepted on another of our devices", False)
    assert router.sent_by(b2) == []
    assert a.flow().phase is Phase.READY and a.flow().other_device == "BPHONE"


def test_to_device_request_to_several_devices_tells_the_others() -> None:
    router = Router()
    a, b = router.add(ALICE, "PHONE"), router.add(ALICE, "LAPTOP")
    c = router.add(ALICE, "TABLET")
    _, out = a.reg.request_to_device(ALICE, ["LAPTOP", "TABLET", "PHONE"])
    assert sorted(o.device_id or "" for o in out) == ["LAPTOP", "TABLET"]  # never ourselves
    router.send(a, out)
    router.flush()
    router.send(b, b.flow().accept())
    router.flush()
    assert a.flow().other_device == "LAPTOP" and a.flow().phase is Phase.READY
    assert _cancelled(c) == (ev.ACCEPTED, False)
    # A late ready from the tablet is answered with m.accepted and changes nothing.
    router.send(c, [Outgoing(ev.READY, ev.with_flow(a.flow().flow_id, {
        "from_device": "TABLET", "methods": [ev.SAS_V1]}), ALICE, "PHONE")])
    router.flush()
    assert a.flow().other_device == "LAPTOP"
    assert router.sent_by(a, ev.CANCEL)[-1].device_id == "TABLET"


def test_declined_request_is_cancelled_on_the_other_devices() -> None:
    router = Router()
    a, b = router.add(ALICE, "PHONE"), router.add(ALICE, "LAPTOP")
    c = router.add(ALICE, "TABLET")
    _, out = a.reg.request_to_device(ALICE, ["LAPTOP", "TABLET"])
    router.send(a, out)
    router.flush()
    router.send(b, b.flow().cancel())
    router.flush()
    assert a.flow().cancellation == ev.Cancellation(ev.USER, "cancelled by the user", False)
    assert _cancelled(c) == (ev.USER, False)


@pytest.mark.parametrize("in_room", [False, True])
def test_both_sides_start_and_the_smaller_id_wins(in_room: bool) -> None:
    router = Router()
    if in_room:
        a, b, _ = _room_pair(router)
    else:
        a, b = _to_device_pair(router)
    router.send(b, b.flow().accept())
    router.flush()
    # Both start before either start arrives.
    router.send(a, a.flow().start_sas())
    router.send(b, b.flow().start_sas())
    router.flush()
    fa, fb = a.flow(), b.flow()
    assert _phases(fa, fb) == {Phase.KEYS_EXCHANGED}
    smaller = min([a, b], key=lambda n: (n.me.user_id, n.me.device_id))
    winner, loser = (fa, fb) if smaller is a else (fb, fa)
    assert winner.we_started and not loser.we_started
    assert _emoji_names(fa) == _emoji_names(fb)
    _finish(router, a, b)
    assert _phases(fa, fb) == {Phase.DONE}
    assert len(router.sent_by(smaller, ev.ACCEPT)) == 0


def test_both_start_with_different_methods_is_unexpected() -> None:
    router = Router()
    a, b = _to_device_pair(router)
    router.send(b, b.flow().accept())
    router.flush()
    router.send(a, a.flow().start_sas())
    router.queue.clear()
    qr_start = ev.with_flow(b.flow().flow_id, {"from_device": "LAPTOP",
                                               "method": "m.reciprocate.v1", "secret": "c2Vj"})
    router.send(b, [Outgoing(ev.START, qr_start, ALICE, "PHONE")])
    router.flush()
    assert _cancelled(a) == (ev.UNEXPECTED_MESSAGE, True)


def test_legacy_mac_method_completes_when_it_is_all_that_is_offered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sas_module, "OUR_MACS", (sas_module.MAC_LEGACY,))
    router = Router()
    a, b = _to_device_pair(router)
    _to_sas(router, a, b)
    accept = router.sent_by(b, ev.ACCEPT)[0]
    assert accept.content["message_authentication_code"] == sas_module.MAC_LEGACY
    _finish(router, a, b)
    assert _phases(a.flow(), b.flow()) == {Phase.DONE}


def test_bare_start_without_request_is_handled() -> None:
    """An older client starts SAS with no request; we accept, and no done messages follow."""
    router = Router()
    a, b = router.add(ALICE, "PHONE"), router.add(ALICE, "LAPTOP")
    # The old client is played by a flow forced into 'ready' with no request.
    old = Verification(a.me, FlowId("legacy-txn"), ALICE, keys=router.keys, clock=router.clock,
                       we_requested=True, other_device="LAPTOP", expects_done=False)
    old.phase = Phase.READY
    router.send(a, old.start_sas())
    router.flush()
    flow = b.flow()
    assert flow.phase is Phase.STARTED and router.sent_by(b) == []
    a.reg.add(old)  # so the old side receives the answers
    router.send(b, flow.accept())
    router.flush()
    assert _emoji_names(old) == _emoji_names(flow)
    router.send(a, old.confirm())
    router.send(b, flow.confirm())
    router.flush()
    assert _phases(old, flow) == {Phase.DONE}
    assert not router.sent_by(a, ev.DONE) and not router.sent_by(b, ev.DONE)


# --- cancel paths ------------------------------------------------------------------------------


def _cancelled(node: Node) -> tuple[str, bool]:
    cancellation = node.flow().cancellation
    assert node.flow().phase is Phase.CANCELLED and cancellation is not None
    return cancellation.code, cancellation.by_us


@pytest.mark.parametrize("when", ["request", "ready", "keys"])
def test_user_cancel(when: str) -> None:
    router = Router()
    a, b = _to_device_pair(router)
    if when != "request":
        router.send(b, b.flow().accept())
        router.flush()
    if when == "keys":
        router.send(a, a.flow().start_sas())
        router.flush()
    router.send(a, a.flow().cancel())
    router.flush()
    assert _cancelled(a) == (ev.USER, True) and _cancelled(b) == (ev.USER, False)
    assert a.flow().cancel() == []  # finished: nothing more is sent
    with pytest.raises(InvalidAction):
        a.flow().confirm()


def test_mismatched_sas() -> None:
    router = Router()
    a, b = _to_device_pair(router)
    _to_sas(router, a, b)
    router.send(b, b.flow().mismatch())
    router.flush()
    assert _cancelled(b) == (ev.MISMATCHED_SAS, True)
    assert _cancelled(a) == (ev.MISMATCHED_SAS, False)
    assert a.flow().result is None


def test_unanswered_request_times_out_on_both_sides() -> None:
    router = Router()
    a, b = _to_device_pair(router)
    router.clock.advance(REQUEST_PROMPT_MS)
    assert b.reg.check_timeouts() == []  # the prompt is dropped quietly
    assert _cancelled(b) == (ev.TIMEOUT, True)
    assert a.reg.next_deadline_ms() == a.flow().deadline_ms
    router.clock.advance(FLOW_TIMEOUT_MS - REQUEST_PROMPT_MS - 1)
    assert a.reg.check_timeouts() == []
    router.clock.advance(1)
    out = a.reg.check_timeouts()
    assert [(o.type, o.content["code"], o.device_id) for o in out] == [
        (ev.CANCEL, ev.TIMEOUT, "LAPTOP")]
    assert _cancelled(a) == (ev.TIMEOUT, True)


def test_peer_that_stops_answering_times_out_after_the_event_timeout() -> None:
    router = Router()
    a, b = _to_device_pair(router)
    router.send(b, b.flow().accept())
    router.flush()
    router.send(a, a.flow().start_sas())
    router.queue.clear()  # the start is lost
    assert a.flow().deadline_ms == router.clock.now_ms() + EVENT_TIMEOUT_MS
    router.clock.advance(EVENT_TIMEOUT_MS)
    router.send(a, a.reg.check_timeouts())
    router.flush()
    assert _cancelled(a) == (ev.TIMEOUT, True) and _cancelled(b) == (ev.TIMEOUT, False)


def test_late_event_after_the_deadline_cancels_with_timeout() -> None:
    router = Router()
    a, b = _to_device_pair(router)
    router.clock.advance(FLOW_TIMEOUT_MS)
    ready = Outgoing(ev.READY, ev.with_flow(a.flow().flow_id, {
        "from_device": "LAPTOP", "methods": [ev.SAS_V1]}), ALICE, "PHONE")
    router.send(b, [ready])
    router.flush()
    assert _cancelled(a) == (ev.TIMEOUT, True)


def test_accept_after_the_prompt_expired_sends_nothing() -> None:
    router = Router()
    _, b = _to_device_pair(router)
    router.clock.advance(REQUEST_PROMPT_MS)
    assert b.flow().accept() == []
    assert _cancelled(b) == (ev.TIMEOUT, True)


def test_unknown_method_in_start() -> None:
    router = Router()
    a, b = _to_device_pair(router)
    router.send(b, b.flow().accept())
    router.flush()
    router.mutate = lambda e: _with(e, key_agreement_protocols=["curve25519"]) \
        if e.type == ev.START else e
    router.send(a, a.flow().start_sas())
    router.flush()
    assert _cancelled(b) == (ev.UNKNOWN_METHOD, True)
    assert _cancelled(a) == (ev.UNKNOWN_METHOD, False)


def test_request_without_sas_cannot_be_accepted_only_cancelled() -> None:
    router = Router()
    a, b = router.add(ALICE, "PHONE"), router.add(ALICE, "LAPTOP")
    router.mutate = lambda e: _with(e, methods=["m.qr_code.scan.v1"]) if e.is_request else e
    _, out = a.reg.request_to_device(ALICE, ["LAPTOP"])
    router.send(a, out)
    router.flush()
    with pytest.raises(InvalidAction):
        b.flow().accept()
    assert b.flow().phase is Phase.REQUESTED and router.sent_by(b) == []


@pytest.mark.parametrize("event_type", [ev.KEY, ev.MAC, ev.DONE, ev.ACCEPT])
def test_unexpected_message(event_type: str) -> None:
    router = Router()
    a, b = _to_device_pair(router)
    router.send(b, b.flow().accept())
    router.flush()
    stray = ev.with_flow(a.flow().flow_id, {"key": "x", "mac": {}, "keys": "x",
                                            "commitment": "x"})
    router.send(b, [Outgoing(event_type, stray, ALICE, "PHONE")])
    router.flush()
    assert _cancelled(a) == (ev.UNEXPECTED_MESSAGE, True)
    assert _cancelled(b) == (ev.UNEXPECTED_MESSAGE, False)
    # The cancel drew no answer back (no error loop).
    assert len(router.sent_by(b, ev.CANCEL)) == 0


def test_mismatched_commitment_when_the_start_is_altered_in_transit() -> None:
    router = Router()
    a, b = _to_device_pair(router)
    router.send(b, b.flow().accept())
    router.flush()
    # A downgrade attempt: the acceptor sees a start offering only the legacy MAC.
    router.mutate = lambda e: _with(e, message_authentication_codes=["hkdf-hmac-sha256"]) \
        if e.type == ev.START else e
    router.send(a, a.flow().start_sas())
    router.flush()
    assert _cancelled(a) == (ev.MISMATCHED_COMMITMENT, True)
    assert _cancelled(b) == (ev.MISMATCHED_COMMITMENT, False)
    assert a.flow().emoji() is None


def test_key_mismatch_when_the_tracker_holds_another_device_key() -> None:
    """A server that swapped the device's key: the SAS matches (the DH is honest) but the MAC
    over the key we hold for the device fails."""
    router = Router()
    a, b = _to_device_pair(router)
    router.keys.devices[(ALICE, "LAPTOP")] = vodozemac.Account().ed25519_key.to_base64()
    _to_sas(router, a, b)
    assert _emoji_names(a.flow()) == _emoji_names(b.flow())
    router.send(b, b.flow().confirm())
    router.flush()
    assert _cancelled(a) == (ev.KEY_MISMATCH, True)
    assert _cancelled(b) == (ev.KEY_MISMATCH, False)
    assert a.flow().result is None and b.flow().result is None


@pytest.mark.parametrize("field_name", ["keys", "mac"])
def test_key_mismatch_when_a_mac_is_altered(field_name: str) -> None:
    router = Router()
    a, b = _to_device_pair(router)
    _to_sas(router, a, b)

    def alter(e: IncomingEvent) -> IncomingEvent:
        if e.type != ev.MAC:
            return e
        if field_name == "keys":
            return _with(e, keys=_flip(e.content["keys"]))
        key_id = next(iter(e.content["mac"]))
        return _with(e, mac={**e.content["mac"], key_id: _flip(e.content["mac"][key_id])})

    router.mutate = alter
    router.send(a, a.flow().confirm())
    router.flush()
    assert _cancelled(b) == (ev.KEY_MISMATCH, True)


def test_user_mismatch_to_device_and_third_parties_ignored_in_rooms() -> None:
    router = Router()
    a, b = _to_device_pair(router)
    router.send(b, b.flow().accept())
    router.flush()
    carol = router.add(CAROL, "CDEV")
    stray = ev.with_flow(a.flow().flow_id, {"from_device": "CDEV", "method": ev.SAS_V1})
    router.send(carol, [Outgoing(ev.START, stray, ALICE, "PHONE")])
    router.flush()
    assert _cancelled(a) == (ev.USER_MISMATCH, True)

    router = Router()
    a, b, flow = _room_pair(router)
    carol = router.add(CAROL, "CDEV", rooms=(ROOM,))
    router.send(carol, [Outgoing(ev.CANCEL, ev.cancel_content(flow.flow_id, ev.USER, "no"),
                                 room_id=ROOM)])
    router.flush()
    assert _phases(a.flow(), b.flow()) == {Phase.REQUESTED}


def test_unknown_transaction_is_answered_except_for_start_and_cancel() -> None:
    router = Router()
    a = router.add(ALICE, "PHONE")
    flow = FlowId("nobody-knows")
    mac = IncomingEvent(ev.MAC, ev.with_flow(flow, {"mac": {}, "keys": ""}), BOB,
                        sender_device="BDEV")
    (reply,) = a.reg.receive(mac)
    assert (reply.type, reply.user_id, reply.device_id) == (ev.CANCEL, BOB, "BDEV")
    assert reply.content == ev.cancel_content(flow, ev.UNKNOWN_TRANSACTION,
                                              "unknown verification flow")
    cancel = IncomingEvent(ev.CANCEL, ev.cancel_content(flow, ev.USER, ""), BOB, "BDEV")
    assert a.reg.receive(cancel) == []
    plaintext = IncomingEvent(ev.KEY, ev.with_flow(flow, {"key": "x"}), BOB)
    assert a.reg.receive(plaintext) == []  # no device to answer to
    in_room = IncomingEvent(ev.KEY, ev.with_flow(FlowId("$x", ROOM), {"key": "x"}), BOB,
                            room_id=ROOM, event_id="$y")
    assert a.reg.receive(in_room) == []


def test_same_device_starting_two_requests_cancels_both() -> None:
    router = Router()
    a, b = _to_device_pair(router)
    _, out = a.reg.request_to_device(ALICE, ["LAPTOP"])
    router.send(a, out)
    router.flush()
    flows = b.reg.flows()
    assert len(flows) == 2 and all(f.phase is Phase.CANCELLED for f in flows)
    assert {f.cancellation.code for f in flows if f.cancellation} == {ev.UNEXPECTED_MESSAGE}
    assert len(b.reg.prune()) == 2 and b.reg.flows() == []


@pytest.mark.parametrize("offset", [-(FLOW_TIMEOUT_MS + 1), 5 * 60_000 + 1])
def test_stale_or_future_requests_are_ignored(offset: int) -> None:
    router = Router()
    a, b = router.add(ALICE, "PHONE"), router.add(ALICE, "LAPTOP")
    router.mutate = lambda e: _with(e, timestamp=router.clock.now_ms() + offset)
    _, out = a.reg.request_to_device(ALICE, ["LAPTOP"])
    router.send(a, out)
    router.flush()
    assert b.reg.flows() == []


def test_in_room_request_for_another_user_is_ignored() -> None:
    router = Router()
    a = router.add(ALICE, "APHONE", rooms=(ROOM,))
    carol = router.add(CAROL, "CDEV", rooms=(ROOM,))
    router.room_request(a, BOB)
    router.flush()
    assert carol.reg.flows() == []


def test_unknown_device_keys_cancel_at_start() -> None:
    router = Router()
    a, b = _to_device_pair(router)
    router.send(b, b.flow().accept())
    router.flush()
    del router.keys.devices[(ALICE, "LAPTOP")]
    router.send(a, a.flow().start_sas())
    router.flush()
    assert _cancelled(a) == (ev.KEY_MISMATCH, True)


def test_device_id_equal_to_the_master_key_is_refused() -> None:
    router = Router()
    a = router.add(ALICE, "APHONE", rooms=(ROOM,))
    evil = "EvilMasterKeyThatIsAlsoADeviceId"
    b = router.add(BOB, evil, rooms=(ROOM,))
    router.keys.masters[BOB] = evil
    router.room_request(a, BOB)
    router.flush()
    _to_sas(router, a, b)
    assert _cancelled(a) == (ev.KEY_MISMATCH, True)


def test_actions_in_the_wrong_phase_raise() -> None:
    router = Router()
    a, b = _to_device_pair(router)
    for action in (a.flow().accept, a.flow().start_sas, a.flow().confirm, a.flow().mismatch,
                   b.flow().start_sas):
        with pytest.raises(InvalidAction):
            action()
    assert a.flow().emoji() is None and a.flow().decimals() is None


def _flip(text: str) -> str:
    """``text`` with its first character changed (a one-bit-ish alteration)."""
    return ("B" if text[0] == "A" else "A") + text[1:]


def _with(event: IncomingEvent, **changes: Any) -> IncomingEvent:
    return IncomingEvent(event.type, {**event.content, **changes}, event.sender,
                         event.sender_device, event.room_id, event.event_id,
                         event.origin_server_ts)
