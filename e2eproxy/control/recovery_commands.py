"""The recovery commands of the control interface: status, enable, recover, reset (see
``proxy/recovery.py``). Secrets come in as arguments (read from files or the terminal by
``ctl``) and never appear in a log line; the recovery key goes back once, in the answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from e2eproxy.control.handlers import bool_arg, find_registered, optional_str_arg
from e2eproxy.control.protocol import ControlError, ControlRequest, Handler
from e2eproxy.control.trust_commands import bootstrap_cross_signing
from e2eproxy.errors import UpstreamError
from e2eproxy.proxy import recovery
from e2eproxy.proxy.registry import AccountRegistry


def recovery_commands(registries: Sequence[AccountRegistry]) -> dict[str, Handler]:
    async def run(request: ControlRequest, work: Callable[..., Awaitable[Any]]) -> Any:
        registry, account = find_registered(registries, request.user, request.device)
        try:
            return await work(registry.upstream, account)
        except recovery.RecoveryError as exc:
            raise ControlError(exc.code, exc.message) from None
        except UpstreamError as exc:
            message = f"the homeserver could not be reached: {exc}"
            raise ControlError("homeserver", message) from None

    async def status(request: ControlRequest) -> Any:
        return await run(request, recovery.status)

    def enabling(reset: bool) -> Handler:
        async def handler(request: ControlRequest) -> Any:
            if reset and not bool_arg(request, "confirm"):
                raise ControlError("confirm", "a reset replaces the cross-signing keys and the "
                                              "key backup: confirm it (--yes)")
            passphrase = optional_str_arg(request, "passphrase")
            password = optional_str_arg(request, "password")

            async def work(upstream: Any, account: Any) -> Any:
                async def bootstrap() -> None:
                    await bootstrap_cross_signing(upstream, account, password)

                return await recovery.enable(upstream, account, passphrase=passphrase,
                                             bootstrap=bootstrap, reset=reset)

            return await run(request, work)

        return handler

    async def recover(request: ControlRequest) -> Any:
        secret = (optional_str_arg(request, "recovery_key")
                  or optional_str_arg(request, "passphrase"))
        if not secret:
            raise ControlError("bad_request", "give the recovery key or the passphrase")

        async def work(upstream: Any, account: Any) -> Any:
            return await recovery.recover(upstream, account, secret)

        return await run(request, work)

    return {
        "recovery.status": status,
        "recovery.enable": enabling(reset=False),
        "recovery.reset": enabling(reset=True),
        "recovery.recover": recover,
    }
