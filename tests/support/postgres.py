"""A throwaway PostgreSQL server for the store tests, from the ``pgserver`` wheel.

pgserver ships the PostgreSQL binaries, so nothing is needed on the machine. It listens on a
Unix socket only (no TCP port to collide with), in a private temporary directory outside pytest's
tmp tree (another pytest run on the machine tightens that tree's modes, which the server, a
different user under root, must traverse). Run as root, pgserver starts the server as a system
user ``pgserver`` that it creates with useradd (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import psycopg


class PostgresCluster:
    """One server; ``new_schema()`` gives each test an empty schema of its own (its URL sets
    ``search_path``, so the store sees a fresh database; a schema is made in milliseconds, a
    database in a quarter of a second)."""

    def __init__(self) -> None:
        with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR unset on CI
            warnings.simplefilter("ignore")
            import pgserver

        self._dir = Path(tempfile.mkdtemp(prefix="e2eproxy-pg-"))
        self._server: Any = pgserver.get_server(self._dir / "data", cleanup_mode="delete")
        self._names = itertools.count(1)
        self.database = f"e2eproxy_{os.getpid()}"
        self._admin(f'CREATE DATABASE "{self.database}"')

    def _admin(self, sql: str) -> None:
        with psycopg.connect(self._server.get_uri(), autocommit=True) as conn:
            conn.execute(sql.encode())

    def new_schema(self) -> str:
        """The URL of a new empty schema (as a store sees it: an empty database)."""
        name = f"t{next(self._names)}"
        url = f"{self._server.get_uri(self.database)}&options=-csearch_path%3D{name}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}".encode())
        return url

    def drop_schema(self, url: str) -> None:
        name = url.rsplit("%3D", 1)[1]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE".encode())

    def stop(self) -> None:
        try:
            self._server.cleanup()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
