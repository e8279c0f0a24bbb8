"""`health` on the control socket: the readiness report of GET /health, for a probe that
runs a command (``e2eproxy ctl health`` exits 0 when ready) rather than an HTTP request."""

from __future__ import annotations

from typing import Any

from e2eproxy.control.protocol import ControlRequest, Handler
from e2eproxy.monitoring.health import HealthChecker


def health_commands(checker: HealthChecker) -> dict[str, Handler]:
    async def health(request: ControlRequest) -> Any:
        return (await checker.report()).to_json()

    return {"health": health}
