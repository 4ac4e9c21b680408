"""Backup and restore of a shuiwu database with ``pg_dump -Fc`` / ``pg_restore``.

The same two functions serve the embedded server (a unix socket in ``DATA_DIR/pgdata``,
URL ``…@/postgres?host=/path/pgdata``) and an external one (``SHUIWU_DATABASE_URL``).

pg_dump refuses a server newer than itself, so each call asks the server its version and
takes the first tool of at least that major version from, in order: the binaries pgserver
bundles (PostgreSQL 16, present wherever the embedded server can run), ``PATH``, and
Debian's versioned ``/usr/lib/postgresql/<major>/bin``. A newer pg_dump reads older
servers fine, so the bundled v16 tools also serve an external PostgreSQL 15.

The connection goes to the tools as libpq environment variables rather than a URL in
argv, so a password never shows in ``ps``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from backend.db import to_asyncpg_url

__all__ = ["BackupError", "backup", "backup_file_name", "libpq_env", "pg_tool", "restore"]


class BackupError(RuntimeError):
    """A backup or restore failed; the message is one line, with PostgreSQL's own words."""


# --------------------------------------------------------------------------- connection

# URL query parameters that have a libpq environment variable of their own. asyncpg's
# ``ssl=`` is its spelling of libpq's ``sslmode=``.
_QUERY_ENV = {
    "host": "PGHOST",
    "port": "PGPORT",
    "sslmode": "PGSSLMODE",
    "ssl": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "passfile": "PGPASSFILE",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "options": "PGOPTIONS",
}
_SSL_TRUE = {"true": "require", "1": "require", "on": "require", "false": "disable", "0": "disable", "off": "disable"}
# Inherited variables that would otherwise pick a different server, database or role
# than the URL names; the URL is the only source of those.
_CONNECTION_ENV = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGSERVICE", "PGOPTIONS")


def libpq_env(database_url: str) -> dict[str, str]:
    """The libpq environment variables (``PGHOST``, ``PGUSER``, …) for ``database_url``.

    Accepts every form shuiwu uses: ``postgresql+asyncpg://``, ``postgresql://``,
    ``postgres://``, a TCP host, or a socket directory in ``?host=/dir`` (several
    hosts become libpq's comma-separated list). Unknown query parameters (asyncpg or
    SQLAlchemy options) mean nothing to libpq and are left out.
    """
    url = make_url(to_asyncpg_url(database_url))
    env: dict[str, str] = {}
    if url.host:
        env["PGHOST"] = url.host
    if url.port is not None:
        env["PGPORT"] = str(url.port)
    if url.username:
        env["PGUSER"] = url.username
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    if url.database:
        env["PGDATABASE"] = url.database
    for key, raw in url.query.items():
        name = _QUERY_ENV.get(key)
        if name is None:
            continue
        value = ",".join(raw) if isinstance(raw, tuple) else raw
        if key == "ssl":
            value = _SSL_TRUE.get(value.lower(), value)
        env.setdefault(name, value)
    return env


def _tool_env(database_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _CONNECTION_ENV}
    env.update(libpq_env(database_url))
    return env


def server_major_version(database_url: str) -> int:
    """The server's major version (``SHOW server_version_num`` 160002 → 16)."""
    env = libpq_env(database_url)
    # Keyword arguments, not the URL: asyncpg would send a query parameter it does not
    # know (SQLAlchemy's ``ssl=``) to the server as a setting, and fail.
    host = env.get("PGHOST")
    port = env.get("PGPORT")
    connect_args: dict[str, Any] = {
        "host": host.split(",") if host and "," in host else host,
        "port": [int(p) for p in port.split(",")] if port and "," in port else (int(port) if port else None),
        "user": env.get("PGUSER"),
        "password": env.get("PGPASSWORD"),
        "database": env.get("PGDATABASE"),
        "ssl": env.get("PGSSLMODE"),
    }

    async def ask() -> int:
        connection = await asyncpg.connect(**{k: v for k, v in connect_args.items() if v is not None})
        try:
            number = await connection.fetchval("SHOW server_version_num")
        finally:
            await connection.close()
        return int(number) // 10000

    # A thread of its own, so this works whether or not the caller runs an event loop.
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, ask()).result()
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        target = _connection_summary(env)
        raise BackupError(f"cannot connect to {target}: {_one_line(str(exc))}") from exc


# --------------------------------------------------------------------------- tools


def _tool_dirs() -> Iterator[Path | None]:
    """Where to look for pg_dump/pg_restore, best first (``None`` stands for ``PATH``)."""
    spec = importlib.util.find_spec("pgserver")  # located, not imported: no side effects
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            yield Path(location) / "pginstall" / "bin"
    yield None
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        majors = sorted((p for p in debian.iterdir() if p.name.isdigit()), key=lambda p: -int(p.name))
        for version_dir in majors:
            yield version_dir / "bin"


@cache
def _tool_major_version(path: str) -> int | None:
    try:
        result = subprocess.run([path, "--version"], capture_output=True, text=True, check=False, timeout=30)
    except OSError:
        return None
    # "pg_dump (PostgreSQL) 16.2" / "pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"
    match = re.search(r"\(PostgreSQL\) (\d+)", result.stdout)
    return int(match.group(1)) if match else None


def pg_tool(name: str, server_major: int) -> Path:
    """The first ``name`` (pg_dump, pg_restore) whose major version is ``>= server_major``."""
    seen: list[str] = []
    for directory in _tool_dirs():
        found = shutil.which(name) if directory is None else shutil.which(name, path=str(directory))
        if found is None:
            continue
        major = _tool_major_version(found)
        seen.append(f"{found} ({major or '?'})")
        if major is not None and major >= server_major:
            return Path(found)
    where = ", ".join(seen) or "none found"
    raise BackupError(f"no {name} for PostgreSQL {server_major} or newer (found: {where}); install postgresql-client-{server_major}")


def _run(tool: Path, args: list[str], database_url: str) -> str:
    try:
        result = subprocess.run([str(tool), *args], env=_tool_env(database_url), capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BackupError(f"{tool.name} could not start: {exc}") from exc
    if result.returncode != 0:
        detail = _tool_message(tool.name, result.stderr) or f"exit status {result.returncode}"
        raise BackupError(f"{tool.name} failed: {detail}")
    return result.stdout


def _tool_message(tool: str, stderr: str) -> str:
    """pg_dump's or pg_restore's stderr as one line.

    Each message starts with "<tool>: " (dropped: the error names the tool already); the
    SQL quoted after "Command was:" / "Query was:" is cut to its first 80 characters.
    """
    kept: list[str] = []
    in_sql = False
    for raw in stderr.splitlines():
        line = " ".join(raw.split())
        if raw.startswith(f"{tool}: "):
            in_sql = False
            line = line.removeprefix(f"{tool}: ").removeprefix("error: ").removeprefix("detail: ")
        elif in_sql:
            continue
        if line.startswith(("Command was:", "Query was:")):
            in_sql = True
            line = line if len(line) <= 80 else line[:79] + "…"
        kept.append(line)
    return _one_line("\n".join(kept))


def _one_line(text: str, limit: int = 600) -> str:
    """PostgreSQL's stderr as one line: lines joined with ``; ``, cut at ``limit``."""
    line = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 1] + "…"


# --------------------------------------------------------------------------- backup


def backup_file_name(database_url: str, now: datetime) -> str:
    """``shuiwu-<database>-<UTC time>.dump``, sortable by time."""
    database = libpq_env(database_url).get("PGDATABASE", "postgres")
    return f"shuiwu-{database}-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}.dump"


def backup(database_url: str, target: Path, *, now: datetime | None = None, lock_wait_s: float = 60.0) -> Path:
    """Dump the database at ``database_url`` in pg_dump's custom format; return the file.

    ``target`` is the file to write when its name has a suffix (``nightly.dump``);
    otherwise, or when it is an existing directory, it is a directory (created if
    missing, like the default ``DATA_DIR/backups``) to put a file named by
    :func:`backup_file_name` in. The dump is written beside the target first and moved
    into place when complete, so a failed backup never leaves a file that looks whole.
    pg_dump takes a consistent snapshot: the service may keep running. A table locked
    exclusively (a migration, a restore) for longer than ``lock_wait_s`` fails the backup
    instead of hanging it.
    """
    if target.is_dir() or not target.suffix:
        target = target / backup_file_name(database_url, now or datetime.now(UTC))
    target.parent.mkdir(parents=True, exist_ok=True)
    tool = pg_tool("pg_dump", server_major_version(database_url))
    partial = target.with_name(target.name + ".partial")
    try:
        args = ["--format=custom", "--no-password", f"--lock-wait-timeout={round(lock_wait_s * 1000)}"]
        _run(tool, [*args, f"--file={partial}"], database_url)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


# --------------------------------------------------------------------------- restore


def restore(database_url: str, source: Path, *, clean: bool) -> None:
    """Load the dump ``source`` into the (existing) database at ``database_url``.

    One transaction: on any error nothing is restored and the database is as before.
    Without ``clean`` the database must not hold the dump's objects yet (a fresh
    ``createdb``); with ``clean`` the dump's objects are dropped first (objects the dump
    does not know are left alone). Ownership is not restored: everything belongs to the
    role of ``database_url``, the one the application connects as. Stop the API, jobs
    and acquisition workers first; open connections hold locks a clean restore waits for.
    """
    if not source.is_file():
        raise BackupError(f"backup file not found: {source}")
    tool = pg_tool("pg_restore", server_major_version(database_url))
    args = ["--no-password", "--no-owner", "--single-transaction", "--exit-on-error"]
    with tempfile.TemporaryDirectory(prefix="shuiwu-restore-") as workdir:
        if clean:
            order = Path(workdir) / "order.list"
            order.write_text(clean_order(_run(tool, ["--list", str(source)], database_url)), encoding="utf-8")
            args += ["--clean", "--if-exists", f"--use-list={order}"]
        args += [f"--dbname={_dbname_arg(database_url)}", str(source)]
        _run(tool, args, database_url)


_TOC_ENTRY = re.compile(
    r"^\d+; \d+ \d+ (?:(?P<attach>INDEX ATTACH) (?P<schema>\S+) (?P<attached>\S+)"
    r"|(?P<kind>INDEX|CONSTRAINT) (?P<owner>\S+) (?:\S+ )?(?P<name>\S+)) "
)


def clean_order(listing: str) -> str:
    """pg_restore's table of contents (``--list``) reordered so ``--clean`` can drop it.

    A clean restore drops the dump's objects in the reverse of the order it creates them.
    pg_dump lists a partitioned table's index or key (``ix_readings_estimated``,
    ``readings_pkey``) before the partitions' indexes and keys attached to it, so the
    drop reaches a partition's first, which PostgreSQL refuses while it is attached
    ("cannot drop index … because index … requires it", "cannot drop inherited
    constraint"). Listed before every other index and constraint instead, a partition's
    are created first (the parent's ``ON ONLY`` index and the ``ATTACH`` still follow
    them) and dropped last, when dropping the parent's has already removed them (the
    drops say ``IF EXISTS``).
    """
    lines = listing.splitlines()
    attached = set()
    for line in lines:
        entry = _TOC_ENTRY.match(line)
        if entry and entry["attach"]:
            attached.add((entry["schema"], entry["attached"]))

    def post_data(line: str) -> bool:
        entry = _TOC_ENTRY.match(line)
        return entry is not None and entry["kind"] is not None

    def of_partition(line: str) -> bool:
        entry = _TOC_ENTRY.match(line)
        return entry is not None and entry["kind"] is not None and (entry["owner"], entry["name"]) in attached

    if not attached or not any(of_partition(line) for line in lines):
        return listing
    first = next(number for number, line in enumerate(lines) if post_data(line))
    moved = [line for line in lines if of_partition(line)]
    kept = [line for line in lines if not of_partition(line)]
    position = sum(1 for line in lines[:first] if not of_partition(line))
    return "\n".join(kept[:position] + moved + kept[position:]) + "\n"


def _dbname_arg(database_url: str) -> str:
    # pg_restore only connects when --dbname is given; the real target comes from the
    # environment (PGDATABASE etc.), so pass its name, not the URL with a password.
    return libpq_env(database_url).get("PGDATABASE", "postgres")


def _connection_summary(env: Mapping[str, str]) -> str:
    """The connection target without the password, for error messages."""
    port = f":{env['PGPORT']}" if "PGPORT" in env else ""
    return f"{env.get('PGUSER', '')}@{env.get('PGHOST', 'localhost')}{port}/{env.get('PGDATABASE', '')}"
