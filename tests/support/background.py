"""The proxy's own background requests (its /sync, the upload of that sync's filter), told
apart from what a client's request made it send: a test that checks "nothing reached the
server" checks the latter, whenever the background sync happens to poll."""

from __future__ import annotations

from e2eproxy.proxy.background_filter import CRYPTO_FILTER
from tests.support.stub_homeserver import RecordedRequest, StubHomeserver


def is_background(request: RecordedRequest) -> bool:
    if request.path.endswith("/sync"):
        return request.query.get("set_presence") == "offline"  # only the proxy's own asks
    return request.path.endswith("/filter") and request.json == CRYPTO_FILTER


def client_made(stub: StubHomeserver, since: int = 0) -> list[RecordedRequest]:
    """The stub's requests from index `since` on, less the proxy's background ones."""
    return [r for r in stub.requests[since:] if not is_background(r)]
