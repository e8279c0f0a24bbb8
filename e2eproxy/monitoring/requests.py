"""``e2eproxy_requests_total``: client requests by listener, route and status, counted on the
pass-through path.

Plain ints in a dict, turned into a counter family at scrape time: an increment here costs a
tuple and a dict update (about 0.2 µs), where a prometheus_client counter takes a lock and
checks its argument (about 0.6 µs). Only the event loop's thread counts and scrapes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

# The app's ``server`` label: the configured listener's name (servers.NAME).
SERVER_LABEL = web.AppKey("metrics_server_label", str)
# A request the router matched to no route (a 404 or 405 before any handler).
UNMATCHED = "unmatched"
OTHER = "other"
# The API version in a route's pattern (routes.py adds one route per version).
_API_VERSION = re.compile(r"^(/_matrix/(?:client|media)/)(?:api/v1|r0|v3|v1|unstable)(?=/|$)")

# None for every unmatched request: the router makes a new route object for each of those.
Key = tuple[web.AbstractRoute | None, int]


def route_label(route: web.AbstractRoute) -> str:
    """The route's pattern, its API version as ``{version}``: "/_matrix/client/{version}/rooms/
    {room}/messages", "/_matrix/{tail}" (pass-through). Bounded by the route table, the same for
    every version of one endpoint, and never a value from the path."""
    if route.resource is None:
        return UNMATCHED
    return _API_VERSION.sub(r"\1{version}", route.resource.canonical)


def status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else OTHER


class RequestCounter(Collector):
    def __init__(self) -> None:
        self._counts: dict[Key, int] = {}
        self._labels: dict[Key, tuple[str, str, str]] = {}

    def __len__(self) -> int:
        """How many (route, status) pairs are counted apart."""
        return len(self._counts)

    def count(self, request: web.Request, status: int) -> None:
        key: Key = (request.match_info.route, status)
        try:
            self._counts[key] += 1
        except KeyError:
            self._count_first(request, key)

    def _count_first(self, request: web.Request, key: Key) -> None:
        route, status = key
        if route is not None and route.resource is not None:
            label = route_label(route)
        else:  # unmatched: one key for all of them
            label, key = UNMATCHED, (None, status)
            if key in self._counts:
                self._counts[key] += 1
                return
        self._labels[key] = (request.app.get(SERVER_LABEL, ""), label, status_label(status))
        self._counts[key] = 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "e2eproxy_requests", "Client requests answered, by listener, route (its pattern, "
            "never the path) and HTTP status", labels=("server", "route", "status"))
        totals: dict[tuple[str, str, str], int] = {}
        for key, count in list(self._counts.items()):  # routes of one label add up
            labels = self._labels[key]
            totals[labels] = totals.get(labels, 0) + count
        for labels, total in sorted(totals.items()):
            family.add_metric(labels, total)
        yield family
