"""The trust commands of the control interface: cross-signing status and bootstrap, devices and
their trust, identity changes, and SAS verification flows. Each drives the account's engine in
steps (``Account.step``) and talks to the homeserver with the account's own token."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from e2eproxy.control.handlers import (
    choice_arg,
    find_registered,
    optional_str_arg,
    str_arg,
)
from e2eproxy.control.protocol import ControlError, ControlRequest, Handler
from e2eproxy.crypto.changes import DeviceRecord
from e2eproxy.crypto.settings import LocalTrust
from e2eproxy.crypto.trust_service import UnknownFlow
from e2eproxy.crypto.verification import Verification
from e2eproxy.errors import LocalProtocolError, MatrixError, UpstreamError
from e2eproxy.protocol import api
from e2eproxy.proxy.account import Account
from e2eproxy.proxy.outgoing import call
from e2eproxy.proxy.registry import AccountRegistry
from e2eproxy.proxy.room_crypto import send_room_event
from e2eproxy.proxy.upstream import Upstream

log = logging.getLogger(__name__)
TRUST_CHOICES = {"verified": LocalTrust.VERIFIED, "blacklisted": LocalTrust.BLACKLISTED,
                 "ignored": LocalTrust.IGNORED, "unset": LocalTrust.UNSET}
FLOW_ACTIONS = {"verify.accept": "accept", "verify.confirm": "confirm",
                "verify.cancel": "cancel", "verify.mismatch": "mismatch"}


def trust_commands(registries: Sequence[AccountRegistry]) -> dict[str, Handler]:
    def target(request: ControlRequest) -> tuple[Upstream, Account]:
        registry, account = find_registered(registries, request.user, request.device)
        return registry.upstream, account

    async def status(request: ControlRequest) -> Any:
        _, account = target(request)
        return account.machine.trust.status()

    async def bootstrap(request: ControlRequest) -> Any:
        upstream, account = target(request)
        return await bootstrap_cross_signing(upstream, account,
                                             optional_str_arg(request, "password"))

    async def devices(request: ControlRequest) -> Any:
        _, account = target(request)
        user = optional_str_arg(request, "user_id") or account.user_id
        return _devices(account, user)

    async def trust(request: ControlRequest) -> Any:
        _, account = target(request)
        user, device = str_arg(request, "user_id"), str_arg(request, "device_id")
        level = TRUST_CHOICES[choice_arg(request, "trust", tuple(TRUST_CHOICES))]
        try:
            async with account.step(wake=True) as step:
                step.machine.set_local_trust(user, device, level)
        except LocalProtocolError as exc:
            raise ControlError("unknown_device", str(exc)) from None
        return {}

    async def accept_change(request: ControlRequest) -> Any:
        _, account = target(request)
        user = str_arg(request, "user_id")
        async with account.step(wake=True) as step:
            accepted = step.machine.trust.state.accept_change(user)
        if not accepted:
            raise ControlError("no_identity", f"no cross-signing identity of {user} is known")
        return {}

    async def verify_list(request: ControlRequest) -> Any:
        _, account = target(request)
        return [_flow_summary(flow) for flow in account.machine.trust.flows.flows()]

    async def verify_start(request: ControlRequest) -> Any:
        upstream, account = target(request)
        user = str_arg(request, "user_id")
        device = optional_str_arg(request, "device_id")
        room = optional_str_arg(request, "room_id")
        return await _start(upstream, account, user, device, room)

    async def verify_show(request: ControlRequest) -> Any:
        _, account = target(request)
        return _flow_details(_flow(account, str_arg(request, "id")))

    def acting(action: str) -> Handler:
        async def handler(request: ControlRequest) -> Any:
            _, account = target(request)
            flow_id = str_arg(request, "id")
            try:
                async with account.step(wake=True) as step:
                    flow = step.machine.trust.act(flow_id, action)
            except UnknownFlow as exc:
                raise ControlError("unknown_verification", str(exc)) from None
            except LocalProtocolError as exc:
                raise ControlError("invalid_action", str(exc)) from None
            return _flow_details(flow)

        return handler

    table: dict[str, Handler] = {
        "cross-signing.status": status,
        "cross-signing.bootstrap": bootstrap,
        "devices": devices,
        "trust": trust,
        "trust.accept-identity-change": accept_change,
        "verify.list": verify_list,
        "verify.start": verify_start,
        "verify.show": verify_show,
    }
    table.update({name: acting(action) for name, action in FLOW_ACTIONS.items()})
    return table


# -- cross-signing ---------------------------------------------------------------------------


async def bootstrap_cross_signing(upstream: Upstream, account: Account, password: str | None
                                  ) -> Any:
    """New cross-signing keys: saved, uploaded (the password only if the server asks), then
    this device signed with them."""
    async with account.step() as step:
        plan = step.machine.trust.bootstrap()  # saved (not active) before anything is sent
    upload = api.device_signing_upload(plan.device_signing)
    status, body = await _post(upstream, account, upload.path, upload.body)
    if status == 401 and isinstance(body, dict) and "flows" in body:
        if not password:
            raise ControlError("password_required",
                               "the homeserver wants the account's password to upload "
                               "cross-signing keys (--password-file, or type it)")
        auth = {"type": "m.login.password", "password": password, "session": body.get("session"),
                "identifier": {"type": "m.id.user", "user": account.user_id}}
        upload = api.device_signing_upload(plan.device_signing, auth)
        status, body = await _post(upstream, account, upload.path, upload.body)
    _check(status, body, "upload the cross-signing keys")
    async with account.step(wake=True) as step:
        step.machine.trust.bootstrap_uploaded()
    signatures = api.signatures_upload(plan.signatures)
    status, body = await _post(upstream, account, signatures.path, signatures.body)
    _check(status, body, "sign this device")
    async with account.step(wake=True) as step:
        step.machine.refresh_devices([account.user_id])  # see our identity as others will
    master = plan.device_signing["master_key"]["keys"]
    log.info("cross-signing keys created for %s", account.user_id)
    return {"master_key": next(iter(master.values()))}


async def _post(upstream: Upstream, account: Account, path: str, body: dict[str, Any]
                ) -> tuple[int, Any]:
    try:
        return await call(upstream, account, "POST", path, body, attempts=2)
    except UpstreamError as exc:
        raise ControlError("homeserver", f"the homeserver could not be reached: {exc}") from None


def _check(status: int, body: Any, doing: str) -> None:
    if status == 200:
        return
    code = body.get("errcode") if isinstance(body, dict) else None
    message = body.get("error") if isinstance(body, dict) else None
    raise ControlError("homeserver", f"could not {doing}: {status} {code or ''} {message or ''}")


# -- devices ---------------------------------------------------------------------------------


def _devices(account: Account, user: str) -> dict[str, Any]:
    machine = account.machine
    pinned = machine.trust.state.pinned(user)
    identity = None
    if pinned is not None:
        identity = {"master_key": pinned.current_master, "verified": pinned.verified,
                    "verification_violation": pinned.verification_violation,
                    "needs_approval": pinned.needs_approval}
    return {"identity": identity,
            "devices": [_device(account, d) for d in machine.devices_of(user)]}


def _device(account: Account, device: DeviceRecord) -> dict[str, Any]:
    unsigned = device.keys.get("unsigned")
    name = unsigned.get("device_display_name") if isinstance(unsigned, dict) else None
    keys = device.keys.get("keys")
    ed25519 = keys.get(f"ed25519:{device.device_id}") if isinstance(keys, dict) else None
    trust = account.machine.trust
    return {"device_id": device.device_id, "display_name": name, "ed25519": ed25519,
            "trust": trust.device_trust(device).value,
            "cross_signed": trust.state.cross_signed(device),
            "local_trust": device.local_trust.value,
            "this_device": device.user_id == account.user_id
            and device.device_id == account.device_id}


# -- verification ----------------------------------------------------------------------------


async def _start(upstream: Upstream, account: Account, user: str, device: str | None,
                 room: str | None) -> Any:
    trust = account.machine.trust
    if device is not None or user == account.user_id:
        try:
            async with account.step(wake=True) as step:
                flow = step.machine.trust.start_to_device(user, device)
        except LocalProtocolError as exc:
            raise ControlError("unknown_device", str(exc)) from None
        return {"id": flow.flow_id.id}
    room = room or trust.dm_with(user)
    if room is None:
        raise ControlError("no_room", f"no encrypted direct room with {user}: name a device, "
                                      "or a room with --room")
    try:
        status, body = await send_room_event(upstream, account, room, "m.room.message",
                                             trust.room_request(user))
    except MatrixError as exc:
        raise ControlError("homeserver", exc.message) from None
    event_id = body.get("event_id") if isinstance(body, dict) else None
    if status != 200 or not isinstance(event_id, str):
        _check(status, body, "send the verification request")
        raise ControlError("homeserver", "the homeserver gave no event id")
    async with account.step(wake=True) as step:
        step.machine.trust.request_sent_in_room(room, event_id, user)
    return {"id": event_id}


def _flow(account: Account, flow_id: str) -> Verification:
    try:
        return account.machine.trust.flow(flow_id)
    except UnknownFlow as exc:
        raise ControlError("unknown_verification", str(exc)) from None


def _flow_summary(flow: Verification) -> dict[str, Any]:
    return {"id": flow.flow_id.id, "other_user": flow.other_user,
            "other_device": flow.other_device, "phase": flow.phase.value,
            "we_requested": flow.we_requested, "room_id": flow.flow_id.room_id}


def _flow_details(flow: Verification) -> dict[str, Any]:
    emoji = flow.emoji()
    cancellation = flow.cancellation
    return {
        **_flow_summary(flow),
        "emoji": [{"symbol": e.symbol, "name": e.description} for e in emoji] if emoji else None,
        "decimals": list(flow.decimals() or ()) or None,
        "cancellation": None if cancellation is None else {
            "code": cancellation.code, "reason": cancellation.reason,
            "by_us": cancellation.by_us},
    }
