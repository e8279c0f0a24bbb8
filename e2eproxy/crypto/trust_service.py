"""The engine's trust facade (``machine.trust``): cross-signing, SAS verification flows and the
secrets our own devices share, as engine steps that return nothing but queue requests.

Verification events come in through the to-device router (``m.key.verification.*``) and, for
in-room flows, through ``receive_room_event``; what the flows answer goes out as plaintext
to-device events or room events (the shell encrypts those where the room is). A finished flow
changes trust: a verified device of ours is signed with our self-signing key (and, if it holds
the cross-signing secrets we lack, asked for them); a verified user gets their master key
signed with our user-signing key.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from e2eproxy.crypto.account import AccountState
from e2eproxy.crypto.changes import ChangeLog, DeviceRecord
from e2eproxy.crypto.clock import Clock
from e2eproxy.crypto.devices import DeviceTracker, device_ed25519
from e2eproxy.crypto.requests import RequestQueue
from e2eproxy.crypto.results import SyncResult
from e2eproxy.crypto.rooms import RoomStates
from e2eproxy.crypto.secrets_gossip import SecretGossip
from e2eproxy.crypto.settings import LocalTrust
from e2eproxy.crypto.to_device import ToDeviceEvent, ToDeviceRouter
from e2eproxy.crypto.trust import Bootstrap, DeviceTrust, TrustState
from e2eproxy.crypto.verification import (
    IncomingEvent,
    LocalDevice,
    Outgoing,
    Phase,
    Verification,
    Verifications,
    room_request_content,
)
from e2eproxy.crypto.verification import events as ev
from e2eproxy.errors import LocalProtocolError
from e2eproxy.protocol import api
from e2eproxy.types import UserId

logger = logging.getLogger(__name__)
SEEN_ROOM_EVENTS = 1_000  # both sync streams carry each room event: handle it once


class UnknownFlow(LocalProtocolError):
    """No verification flow has that id."""


class Trust:
    def __init__(self, account: AccountState, devices: DeviceTracker, rooms: RoomStates,
                 gossip: SecretGossip, state: TrustState, queue: RequestQueue, clock: Clock,
                 log: ChangeLog) -> None:
        self.state = state
        self._account, self._devices, self._rooms = account, devices, rooms
        self._gossip, self._queue, self._clock, self._log = gossip, queue, clock, log
        self.flows = Verifications(self._me(), keys=self, clock=clock)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._settled: set[tuple[str, str]] = set()  # flows whose result was applied

    def register(self, router: ToDeviceRouter) -> None:
        router.register(tuple(sorted(ev.VERIFICATION_TYPES)), self._to_device)

    # -- PeerKeys, for the flows --------------------------------------------------------
    def device_ed25519(self, user_id: str, device_id: str) -> str | None:
        device = self._devices.get(user_id, device_id)
        return device_ed25519(device) if device is not None and not device.deleted else None

    def master_key(self, user_id: str) -> str | None:
        identity = self.state.identity(user_id)
        return identity.master.public_key if identity is not None else None

    def _me(self) -> LocalDevice:
        # Our master key is MACed (vouched for) only when we trust it ourselves.
        master = self.master_key(self._account.user_id) if self.state.own_trusted() else None
        return LocalDevice(self._account.user_id, self._account.device_id,
                           self._account.ed25519, master)

    # -- events in -----------------------------------------------------------------------
    def _to_device(self, event: ToDeviceEvent, result: SyncResult) -> None:
        device = event.sender.device.device_id if event.sender.device is not None else None
        self._feed(IncomingEvent(event.type, event.content, event.sender.user_id, device))

    def receive_room_event(self, room_id: str, event: dict[str, Any]) -> None:
        """A (decrypted) room event that may belong to an in-room verification."""
        event_id, sender = event.get("event_id"), event.get("sender")
        content, event_type = event.get("content"), event.get("type")
        if not (isinstance(event_id, str) and isinstance(sender, str)
                and isinstance(content, dict) and isinstance(event_type, str)):
            return
        if event_type not in ev.VERIFICATION_TYPES and not (
            event_type == ev.ROOM_MESSAGE and content.get("msgtype") == ev.REQUEST
        ):
            return
        if event_id in self._seen:
            return
        self._seen[event_id] = None
        if len(self._seen) > SEEN_ROOM_EVENTS:
            self._seen.popitem(last=False)
        ts = event.get("origin_server_ts")
        self._feed(IncomingEvent(event_type, content, sender, room_id=room_id, event_id=event_id,
                                 origin_server_ts=ts if isinstance(ts, int) else None))

    def _feed(self, incoming: IncomingEvent) -> None:
        self.flows.me = self._me()
        self._send(self.flows.receive(incoming))
        self._start_when_ready()
        self._settle()

    def _start_when_ready(self) -> None:
        """A request of ours the other side made ready: start SAS, the only method we offer
        (a headless proxy has no one to pick a method; if both start, the spec picks one)."""
        for flow in self.flows.flows():
            if flow.we_requested and flow.phase is Phase.READY:
                self._send(flow.start_sas())

    # -- user actions (ctl) --------------------------------------------------------------
    def start_to_device(self, user_id: str, device_id: str | None) -> Verification:
        """Ask one device of ``user_id`` (or all our other devices) to verify."""
        if device_id is not None:
            if self.device_ed25519(user_id, device_id) is None:
                raise LocalProtocolError(f"{user_id} has no device {device_id} we know of")
            devices = [device_id]
        else:
            devices = [d.device_id for d in self._devices.active_devices(UserId(user_id))
                       if d.device_id != self._account.device_id]
            if not devices:
                raise LocalProtocolError(f"{user_id} has no other device we know of")
        self.flows.me = self._me()
        flow, out = self.flows.request_to_device(user_id, devices)
        self._send(out)
        return flow

    def room_request(self, user_id: str) -> dict[str, Any]:
        """The ``m.room.message`` that asks ``user_id`` in a room (the shell sends it, then
        calls ``request_sent_in_room`` with its event id)."""
        return room_request_content(self._me(), user_id)

    def request_sent_in_room(self, room_id: str, event_id: str, user_id: str) -> Verification:
        self._seen[event_id] = None  # it comes back in our sync: it is ours, not a new request
        self.flows.me = self._me()
        return self.flows.request_sent_in_room(room_id, event_id, user_id)

    def dm_with(self, user_id: str) -> str | None:
        """An encrypted room whose only joined members are us and ``user_id``."""
        return self._rooms.direct_room(UserId(self._account.user_id), UserId(user_id))

    def flow(self, flow_id: str) -> Verification:
        for flow in self.flows.flows():
            if flow.flow_id.id == flow_id:
                return flow
        raise UnknownFlow(f"no verification {flow_id}")

    def act(self, flow_id: str, action: str) -> Verification:
        """``accept``, ``start`` (SAS), ``confirm``, ``mismatch`` or ``cancel`` on one flow."""
        flow = self.flow(flow_id)
        self.flows.me = self._me()
        actions = {"accept": flow.accept, "start": flow.start_sas, "confirm": flow.confirm,
                   "mismatch": flow.mismatch, "cancel": flow.cancel}
        self._send(actions[action]())  # InvalidAction (wrong phase) goes to the caller
        self._settle()
        return flow

    def check_timeouts(self) -> None:
        self._send(self.flows.check_timeouts())

    # -- events out and results ----------------------------------------------------------
    def _send(self, out: list[Outgoing]) -> None:
        for item in out:
            if item.room_id is not None:
                self._queue.add(api.room_message(item.room_id, item.type, item.content))
            elif item.user_id is not None and item.device_id is not None:
                messages = {item.user_id: {item.device_id: item.content}}
                self._queue.add(api.to_device(item.type, messages))

    def _settle(self) -> None:
        for flow in self.flows.flows():
            key = (flow.flow_id.id, flow.flow_id.room_id or "")
            if flow.phase is not Phase.DONE or flow.result is None or key in self._settled:
                continue
            self._settled.add(key)
            self._verified(flow)

    def _verified(self, flow: Verification) -> None:
        result = flow.result
        assert result is not None
        device = self._devices.get(result.user_id, result.device_id)
        if device is not None and result.device_ed25519 == device_ed25519(device):
            self._devices.set_local_trust(device.user_id, device.device_id, LocalTrust.VERIFIED)
        own = result.user_id == self._account.user_id
        if result.master_key is not None:
            self.state.mark_user_verified(result.user_id, result.master_key)
        logger.info("verified %s/%s%s", result.user_id, result.device_id,
                    " and their identity" if result.master_key else "")
        if own and device is not None:
            body = self.state.sign_own_device_request(device.keys)
            if body is not None:
                self._queue.add(api.signatures_upload(body))
            self._gossip.request_missing(device)
        elif not own:
            body = self.state.sign_user_request(result.user_id)
            if body is not None:
                self._queue.add(api.signatures_upload(body))

    # -- cross-signing -------------------------------------------------------------------
    def bootstrap(self) -> Bootstrap:
        return self.state.bootstrap()

    def bootstrap_uploaded(self) -> None:
        self.state.bootstrap_uploaded()

    def sign_this_device(self) -> None:
        """Queue our SSK signature of this device (after the keys came from elsewhere)."""
        body = self.state.sign_own_device_request(self._account.device_keys())
        if body is not None:
            self._queue.add(api.signatures_upload(body))

    def device_trust(self, device: DeviceRecord) -> DeviceTrust:
        return self.state.device_trust(device)

    def status(self) -> dict[str, Any]:
        return self.state.status(self._devices.get(self._account.user_id,
                                                   self._account.device_id))
