"""What a command handler needs: the account a request names, and its arguments, checked.

Handlers raise ControlError for anything the user can fix (its code and message reach
`e2eproxy ctl` as they are); any other exception is logged and answered "internal".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from e2eproxy.control.protocol import ControlError, ControlRequest, ErrorCode
from e2eproxy.proxy.account import Account
from e2eproxy.proxy.registry import AccountRegistry


def find_registered(
    registries: Sequence[AccountRegistry], user: str | None, device: str | None
) -> tuple[AccountRegistry, Account]:
    """The one account of `user` (with `device`, when given) across every served homeserver,
    with the registry that drives it; ControlError "no_account" or "ambiguous_account"."""
    if not user:
        raise ControlError(ErrorCode.BAD_REQUEST, "this command needs --user @user:server")
    of_user = [
        (registry, account)
        for registry in registries
        for account in registry.accounts.values()
        if account.key.user_id == user
    ]
    found = [found for found in of_user if device is None or found[1].key.device_id == device]
    if len(found) == 1:
        return found[0]
    held = ", ".join(sorted({str(account.key.device_id) for _, account in of_user}))
    if not found:
        if not of_user:
            raise ControlError(ErrorCode.NO_ACCOUNT, f"e2eproxy holds no device of {user}")
        raise ControlError(
            ErrorCode.NO_ACCOUNT,
            f"e2eproxy holds no device {device} of {user}; it holds: {held}",
        )
    if device is None:
        raise ControlError(
            ErrorCode.AMBIGUOUS_ACCOUNT,
            f"e2eproxy holds {len(found)} devices of {user}: {held}; choose one with --device",
        )
    servers = ", ".join(sorted(registry.homeserver for registry, _ in found))
    raise ControlError(
        ErrorCode.AMBIGUOUS_ACCOUNT,
        f"e2eproxy holds device {device} of {user} for several homeservers: {servers}",
    )


def find_account(
    registries: Sequence[AccountRegistry], user: str | None, device: str | None
) -> Account:
    """The one account a request's --user (and --device) name; see find_registered."""
    return find_registered(registries, user, device)[1]


def _bad_arg(name: str, what: str) -> ControlError:
    return ControlError(ErrorCode.BAD_REQUEST, f'argument "{name}" must be {what}')


def str_arg(request: ControlRequest, name: str) -> str:
    """A required, non-empty string argument."""
    value = request.args.get(name)
    if not isinstance(value, str) or not value:
        raise _bad_arg(name, "a non-empty string")
    return value


def optional_str_arg(request: ControlRequest, name: str) -> str | None:
    """A string argument that may be missing or null."""
    value = request.args.get(name)
    if value is not None and not isinstance(value, str):
        raise _bad_arg(name, "a string or null")
    return value


def bool_arg(request: ControlRequest, name: str, default: bool = False) -> bool:
    value: Any = request.args.get(name, default)
    if not isinstance(value, bool):
        raise _bad_arg(name, "true or false")
    return value


def choice_arg(request: ControlRequest, name: str, choices: Sequence[str]) -> str:
    value = request.args.get(name)
    if value not in choices:
        raise _bad_arg(name, "one of " + ", ".join(choices))
    assert isinstance(value, str)
    return value
