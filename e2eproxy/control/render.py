"""How `e2eproxy ctl` shows each command's result to a person (--json prints them raw).

Pure functions from a result to text. They read results leniently (a missing field shows as
"-"), so a newer proxy's extra or missing fields never crash the client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MISSING = "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart, a header line first."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _text(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def ping(result: Any) -> str:
    r = _dict(result)
    return f"e2eproxy {_text(r.get('version'))} is running (pid {_text(r.get('pid'))})"


def health(result: Any) -> str:
    r = _dict(result)
    checks = sorted(_dict(r.get("checks")).items())
    return "\n".join([f"e2eproxy is {_text(r.get('status'))}",
                      *(f"  {name}: {_text(state)}" for name, state in checks)])


def stats(result: Any) -> str:
    r = _dict(result)
    names = (("pid", "pid"), ("accounts", "accounts held"), ("tasks", "asyncio tasks"),
             ("threads", "threads"), ("open_fds", "open files"))
    return "\n".join(f"{label}: {_text(r.get(key))}" for key, label in names)


def accounts(result: Any) -> str:
    rows = [
        [_text(a.get("user_id")), _text(a.get("device_id")), _text(a.get("homeserver"))]
        for a in map(_dict, _list(result))
    ]
    if not rows:
        return "e2eproxy holds no accounts yet (a client logs in through it to add one)."
    return table(["USER", "DEVICE", "HOMESERVER"], rows)


def cross_signing_status(result: Any, user: str) -> str:
    r = _dict(result)
    if not r.get("has_identity"):
        return (f"{user} has no cross-signing identity.\n"
                f"Create one with: e2eproxy ctl cross-signing bootstrap --user {user}")
    keys = _dict(r.get("private_keys"))
    held = ", ".join(
        f"{label} {_text(keys.get(name))}"
        for name, label in (("master", "master"), ("self_signing", "self-signing"),
                            ("user_signing", "user-signing"))
    )
    return "\n".join([
        f"Master key:            {_text(r.get('master_key'))}",
        f"This device signed:    {_text(r.get('device_signed'))}",
        f"Private keys held:     {held}",
        f"Identity trusted:      {_text(r.get('trusted'))}",
    ])


def bootstrap(result: Any) -> str:
    master = _text(_dict(result).get("master_key"))
    return f"Cross-signing is set up. Master key: {master}"


def _identity_lines(identity: Any, user_id: str, asking_user: str) -> list[str]:
    if not isinstance(identity, Mapping):
        return [f"{user_id} has no cross-signing identity."]
    state = "verified" if identity.get("verified") else "not verified"
    lines = [f"Identity of {user_id}: master key {_text(identity.get('master_key'))} ({state})"]
    accept = f"e2eproxy ctl trust --user {asking_user} {user_id} --accept-identity-change"
    if identity.get("verification_violation"):
        lines.append(f"WARNING: the identity of {user_id} changed since it was verified. "
                     f"If the change is expected: {accept}")
    elif identity.get("needs_approval"):
        lines.append(f"The identity of {user_id} changed. If that is expected: {accept}")
    return lines


def devices(result: Any, user_id: str, asking_user: str) -> str:
    r = _dict(result)
    rows = [
        [
            ("* " if d.get("this_device") else "  ") + _text(d.get("device_id")),
            _text(d.get("display_name")),
            _text(d.get("trust")),
            _text(d.get("cross_signed")),
            _text(d.get("local_trust")),
            _text(d.get("ed25519")),
        ]
        for d in map(_dict, _list(r.get("devices")))
    ]
    lines = _identity_lines(r.get("identity"), user_id, asking_user)
    if not rows:
        return "\n".join([*lines, f"{user_id} has no devices with keys."])
    headers = ["  DEVICE", "NAME", "TRUST", "CROSS-SIGNED", "LOCAL", "ED25519"]
    return "\n".join([*lines, "", table(headers, rows)])


def trust(device_id: str | None, user_id: str, level: str | None) -> str:
    if device_id is None:
        return f"Accepted the current identity of {user_id}."
    return f"Device {device_id} of {user_id} is now {level}."


def verify_list(result: Any) -> str:
    rows = [
        [
            _text(f.get("id")),
            _text(f.get("other_user")),
            _text(f.get("other_device")),
            _text(f.get("phase")),
            "us" if f.get("we_requested") else "them",
            _text(f.get("room_id")) if f.get("room_id") else "to-device",
        ]
        for f in map(_dict, _list(result))
    ]
    if not rows:
        return "No verifications in progress."
    return table(["ID", "WITH", "DEVICE", "PHASE", "STARTED BY", "ROOM"], rows)


def verify_started(result: Any, user: str) -> str:
    flow_id = _text(_dict(result).get("id"))
    return (f"Verification {flow_id} requested. Follow it with: "
            f"e2eproxy ctl verify show --user {user} {flow_id}")


def sas(result: Any) -> list[str]:
    """The emoji, one a line with its name, and the decimals: what both sides compare."""
    r = _dict(result)
    lines = []
    emoji = _list(r.get("emoji"))
    if emoji:
        lines.append("Compare these emoji with the other device:")
        lines += [f"  {_text(e.get('symbol'))}  {_text(e.get('name'))}" for e in map(_dict, emoji)]
    decimals = _list(r.get("decimals"))
    if decimals:
        lines.append("Or these numbers: " + " ".join(_text(d) for d in decimals))
    return lines


def cancellation(result: Any) -> str:
    c = _dict(_dict(result).get("cancellation"))
    if not c:
        return "The verification was cancelled."
    who = "by us" if c.get("by_us") else "by the other side"
    reason = c.get("reason") or "no reason given"
    return f"The verification was cancelled {who}: {reason} ({_text(c.get('code'))})"


def verify_show(result: Any) -> str:
    r = _dict(result)
    lines = [f"Phase: {_text(r.get('phase'))}", *sas(r)]
    if r.get("cancellation"):
        lines.append(cancellation(r))
    return "\n".join(lines)
