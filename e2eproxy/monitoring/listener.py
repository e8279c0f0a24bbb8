"""The metrics listener ([metrics] listen): ``GET /metrics`` (Prometheus), ``GET /health``
(ready: 200, else 503 saying which check failed) and ``GET /health/live`` (the process serves).

A listener of its own, off unless configured: the Matrix listeners are reachable by any local
process and web page, and the operator decides who may reach this one.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from e2eproxy.config import ListenAddress
from e2eproxy.errors import ConfigError
from e2eproxy.monitoring.health import HealthChecker
from e2eproxy.monitoring.metrics import Metrics

METRICS = web.AppKey("metrics", Metrics)
HEALTH = web.AppKey("health", HealthChecker)


async def metrics_page(request: web.Request) -> web.Response:
    # Prometheus asks for OpenMetrics when it can; anything else gets the text format.
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(request.app[METRICS].registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def health(request: web.Request) -> web.Response:
    report = await request.app[HEALTH].report()
    return web.json_response(report.to_json(), status=200 if report.ready else 503)


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "live"})


def create_metrics_app(metrics: Metrics, checker: HealthChecker) -> web.Application:
    app = web.Application()
    app[METRICS] = metrics
    app[HEALTH] = checker
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/health", health)
    app.router.add_get("/health/live", live)
    return app


async def start_metrics_listener(listen: ListenAddress, metrics: Metrics,
                                 checker: HealthChecker) -> web.AppRunner:
    """Serve the metrics app on ``listen``; the caller cleans the runner up."""
    runner = web.AppRunner(create_metrics_app(metrics, checker), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {listen} (metrics.listen): {exc.strerror}") from exc
    return runner
