"""An in-memory Matrix homeserver (client-server API) for e2eproxy's integration tests.

Start it in-process with :func:`running_stub` (a real socket on 127.0.0.1) or hand
:func:`create_stub_app` to pytest-aiohttp's ``aiohttp_client``. Everything it stores is on
the :class:`StubHomeserver` object, and ``stub.faults`` injects per-route failures::

    async with running_stub() as stub:
        alice = stub.register("alice", "pw")            # "@alice:stub.test"
        session = stub.login("alice", "pw", device_id="DEV")  # .access_token, .device_id
        room_id = stub.create_room(alice, name="r", invite=[...])
        stub.faults.add(r"/sendToDevice/", method="PUT", status=500, times=1)
        ...  # talk HTTP to stub.base_url
        stub.raw_events(room_id); stub.requests_to(r"/sync")
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
