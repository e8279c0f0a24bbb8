"""One serving process per data dir, and how its successor recognises the leases it left.

`e2eproxy run` holds an exclusive ``flock`` on ``instance.lock`` in its data dir for as long as
it lives; the kernel drops it when the process dies, however it dies. The file keeps a random
id made the first time. The process's lease holder ids start with a *site* derived from that id,
the host name and the data dir's real path, so a later process of the same data dir, which got
the lock, knows that a live lease under its site belonged to a process that is gone (the lock
proves no other process serves this data dir) and takes it at once instead of waiting out its
term: a crash and restart under systemd costs a second, not a lease term. A lease of any other
site (another instance on a shared PostgreSQL store, or an offline command) is waited for as
before.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from pathlib import Path

from e2eproxy.errors import E2EProxyError

try:
    import fcntl
except ImportError:  # Windows has no flock: no claim, leases are waited out
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "instance.lock"
_ID_BYTES = 16


class DataDirInUse(E2EProxyError):
    """Another live process holds the data dir."""


class DataDirClaim:
    """The held lock of one data dir; ``site`` prefixes this process's lease holder ids."""

    def __init__(self, fd: int, site: str) -> None:
        self._fd: int | None = fd
        self.site = site

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def claim_data_dir(data_dir: Path) -> DataDirClaim | None:
    """Lock ``data_dir`` for this process (None where flock does not exist). Raises
    ``DataDirInUse`` when another live process holds it."""
    if fcntl is None:
        return None
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirInUse(
                f"another e2eproxy is running on the data dir {data_dir} (it holds {path}); "
                "stop it first, or give this one another data dir"
            ) from None
        instance_id = _read_or_make_id(fd)
    except BaseException:
        os.close(fd)
        raise
    material = "\0".join((socket.gethostname(), str(data_dir.resolve()), instance_id))
    return DataDirClaim(fd, "site-" + hashlib.sha256(material.encode()).hexdigest()[:16])


def _read_or_make_id(fd: int) -> str:
    """The data dir's id, written once (under the lock) and kept."""
    text = os.pread(fd, 256, 0).decode("ascii", "replace").strip()
    if len(text) == 2 * _ID_BYTES and all(c in "0123456789abcdef" for c in text):
        return text
    text = secrets.token_hex(_ID_BYTES)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{text}\n".encode(), 0)
    os.fsync(fd)
    return text
