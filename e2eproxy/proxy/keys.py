"""Typed keys for what the aiohttp application holds."""

from __future__ import annotations

from aiohttp import web

from e2eproxy.config import Config, ServerConfig
from e2eproxy.proxy.upstream import Upstream

CONFIG = web.AppKey("config", Config)
SERVER = web.AppKey("server", ServerConfig)
UPSTREAM = web.AppKey("upstream", Upstream)
