"""An in-memory Matrix homeserver (client-server API) for e2eproxy's integration tests.

Start it in-process with :func:`running_stub` (a real socket on 127.0.0.1) or hand
:func:`create_stub_app` to pytest-aiohttp's ``aiohttp_client``. Everything it stores is on
the :class:`StubHomeserver` object, and ``stub.faults`` injects per-route failures.
"""

from .accounts import Session
from .app import create_stub_app, running_stub
from .common import STUB_KEY
from .errors import MatrixError
from .faults import Fault, FaultRegistry
from .roomstore import Room, StoredEvent
from .server import RecordedRequest, StubHomeserver

__all__ = [
    "STUB_KEY",
    "Fault",
    "FaultRegistry",
    "MatrixError",
    "RecordedRequest",
    "Room",
    "Session",
    "StoredEvent",
    "StubHomeserver",
    "create_stub_app",
    "running_stub",
]
