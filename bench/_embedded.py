"""What the self-contained benches share: a free loopback port, and an embedded
PostgreSQL in a work directory with a database ``bench`` (durability off: throwaway
data, as in tests/conftest.py)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def embedded_database(workdir: Path) -> Iterator[str]:
    """The URL of the database ``bench`` on an embedded server in ``workdir``, stopped on leaving."""
    from backend.db import run_admin, start_embedded, stop_embedded, with_database

    server_url = start_embedded(workdir / "pgdata")
    try:
        run_admin(server_url, "ALTER SYSTEM SET fsync = off", "ALTER SYSTEM SET synchronous_commit = off")
        run_admin(server_url, "SELECT pg_reload_conf()")
        run_admin(server_url, 'CREATE DATABASE "bench"')
        yield with_database(server_url, "bench")
    finally:
        stop_embedded()
