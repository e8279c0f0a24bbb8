"""Typed keys for what the aiohttp application holds."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from e2eproxy.config import Config, ServerConfig
from e2eproxy.monitoring.metrics import Metrics
from e2eproxy.proxy.upstream import Upstream

if TYPE_CHECKING:
    from e2eproxy.proxy.media import MediaService
    from e2eproxy.proxy.registry import AccountRegistry

CONFIG = web.AppKey("config", Config)
SERVER = web.AppKey("server", ServerConfig)
# The host names a request's Host header may carry (besides any IP address).
HOST_NAMES: web.AppKey[frozenset[str]] = web.AppKey("host_names")
UPSTREAM = web.AppKey("upstream", Upstream)
REGISTRY: web.AppKey[AccountRegistry] = web.AppKey("registry")
MEDIA: web.AppKey[MediaService] = web.AppKey("media")
# Set when the proxy begins to stop: long-polls waiting on the homeserver give up at once.
STOPPING = web.AppKey("stopping", asyncio.Event)
# The process's metrics (one registry for all its listeners; each app's own in a test).
METRICS = web.AppKey("metrics", Metrics)
