"""Database access: the embedded PostgreSQL, the engine, sessions, COPY and migrations.

PostgreSQL is the only store. Without ``SHUIWU_DATABASE_URL`` the process starts (or
attaches to) an embedded server kept under ``DATA_DIR/pgdata`` by ``pgserver``: the
server is shared by every shuiwu process using that directory and stopped by the last
one to exit. A run killed with SIGKILL leaves its pid in pgserver's handle list; we prune
dead pids before attaching so the next start recovers (NOTES.md).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import warnings
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, event, text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlmodel import SQLModel

from backend import slicing
from backend.errors import DomainError, QueryTimeout, QueryTooLarge
from backend.settings import Settings

log = logging.getLogger(__name__)

# Stable constraint names, so Alembic migrations name the same thing on every server.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata: MetaData = SQLModel.metadata

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

# Objects no model declares, which autogenerate must never propose to drop: monthly
# partitions of partitioned tables (<table>_pYYYYMM) and PgQueuer's own tables.
PARTITION_NAME = re.compile(r".+_p\d{6}$")
UNMANAGED_PREFIXES = ("pgqueuer",)


def include_name(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
    """Alembic's filter: skip partitions and PgQueuer's tables."""
    return not (
        type_ == "table" and name is not None and (PARTITION_NAME.match(name) is not None or name.startswith(UNMANAGED_PREFIXES))
    )


# --------------------------------------------------------------------------- embedded


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prune_dead_handles(pgdata: Path) -> None:
    """Drop pids of processes that died without detaching from the embedded server."""
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    try:
        pids = json.loads(handles.read_text() or "[]")
    except json.JSONDecodeError:
        pids = []
    alive = [pid for pid in pids if isinstance(pid, int) and _pid_alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


_embedded: Any = None


TERMINATED_EXIT_STATUS = 128 + signal.SIGTERM


def start_embedded(pgdata: Path) -> str:
    """Start or attach to the embedded server; return its asyncpg URL.

    SIGTERM is turned into ``SystemExit(143)`` (128 + 15, what a shell reports for a
    process the signal killed) so pgserver's atexit hook detaches (and stops the server
    when this was the last user) instead of leaving it orphaned, and the exit status
    still says the work was interrupted: a ``demo load`` stopped this way never reads as
    done to the script that ran it.
    """
    global _embedded
    pgdata = pgdata.resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    prune_dead_handles(pgdata)
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(TERMINATED_EXIT_STATUS)))
    with warnings.catch_warnings():
        # platformdirs, asked by pgserver for a runtime directory it does not use here.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver  # type: ignore[attr-defined,unused-ignore]  # imported lazily: external deployments never load it

        _embedded = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined,unused-ignore]
    uri: str = _embedded.get_uri()
    return to_asyncpg_url(uri)


def stop_embedded() -> None:
    """Detach from the embedded server now (it stops if nobody else uses it)."""
    global _embedded
    if _embedded is not None:
        _embedded.cleanup()
        _embedded = None


def to_asyncpg_url(url: str) -> str:
    """Normalise any PostgreSQL URL to the SQLAlchemy asyncpg dialect."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url}")


def to_libpq_url(url: str) -> str:
    """The same URL for libpq tools (pg_dump, psql) and raw asyncpg."""
    return "postgresql://" + to_asyncpg_url(url)[len("postgresql+asyncpg://") :]


def resolve_database_url(database_url: str | None, data_dir: Path) -> str:
    """The configured URL, or the embedded server's (started on demand)."""
    if database_url:
        return to_asyncpg_url(database_url)
    return start_embedded(data_dir / "pgdata")


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server."""
    head, sep, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{database}{sep}{query}"


def run_admin(url: str, *statements: str) -> None:
    """Run statements on the server's ``postgres`` database, outside any transaction
    (CREATE/DROP DATABASE, ALTER SYSTEM): for tests, benchmarks and operations tools.
    Synchronous, so it must not be called from a running event loop."""
    import asyncio

    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(to_libpq_url(with_database(url, "postgres")))
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


# --------------------------------------------------------------------------- engine


@dataclass(frozen=True, slots=True)
class StatementLimits:
    """What one statement may take on a connection, and how long a transaction may sit
    idle (0: no limit). PostgreSQL enforces them, so a request that asks too much is cut
    however it got past the input bounds (docs/operations.md, "Database guards")."""

    statement_timeout_s: float
    idle_in_transaction_timeout_s: float
    temp_file_limit_mb: int
    # max_parallel_workers_per_gather; None keeps the server's value (bulk work may use
    # every core, the API's statements one each: admission counts a request as one core).
    parallel_workers_per_statement: int | None = None

    @classmethod
    def for_api(cls, settings: Settings) -> StatementLimits:
        return cls(settings.db_statement_timeout_s, settings.db_idle_in_transaction_timeout_s,
                   settings.db_temp_file_limit_mb, settings.db_parallel_workers_per_statement)

    @classmethod
    def for_bulk(cls, settings: Settings) -> StatementLimits:
        """Jobs, demo load, partitions and exports: long statements are their normal work."""
        return cls(settings.db_bulk_statement_timeout_s, settings.db_bulk_idle_in_transaction_timeout_s,
                   settings.db_bulk_temp_file_limit_mb)

    def timeouts(self) -> dict[str, str]:
        """The user-settable limits, as connection ``server_settings``."""
        settings = {"statement_timeout": f"{round(self.statement_timeout_s * 1000)}ms",
                    "idle_in_transaction_session_timeout": f"{round(self.idle_in_transaction_timeout_s * 1000)}ms"}
        if self.parallel_workers_per_statement is not None:
            settings["max_parallel_workers_per_gather"] = str(self.parallel_workers_per_statement)
        return settings

    @property
    def temp_file_limit(self) -> str:
        return f"{self.temp_file_limit_mb}MB" if self.temp_file_limit_mb else "-1"


def create_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20, limits: StatementLimits | None = None,
                  **kwargs: Any) -> AsyncEngine:
    # JIT costs more than it saves on our short OLTP queries.
    server_settings = {"jit": "off", "application_name": "shuiwu", **(limits.timeouts() if limits else {})}
    engine = create_async_engine(
        to_asyncpg_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=False,
        connect_args={"server_settings": server_settings},
        **kwargs,
    )
    if limits is not None:
        _limit_temp_files(engine, limits.temp_file_limit)
    return engine


def _limit_temp_files(engine: AsyncEngine, limit: str) -> None:
    """``SET temp_file_limit`` on each new connection of ``engine``, when the role may.

    It is a superuser setting (PostgreSQL 15+ can ``GRANT SET ON PARAMETER temp_file_limit``):
    in the startup packet it would refuse the connection of any other role, so it is set
    after connecting, and a role without the right warns once and keeps the server's value
    (the DBA sets it with ``ALTER ROLE … SET temp_file_limit``)."""
    refused = False

    async def set_limit(connection: Any) -> None:
        nonlocal refused
        import asyncpg

        try:
            await connection.execute(f"SET temp_file_limit = '{limit}'")
        except asyncpg.InsufficientPrivilegeError:
            refused = True
            log.warning("temp_file_limit not set: role %s may not set it (ALTER ROLE … SET temp_file_limit = '%s')",
                        getattr(connection.get_settings(), "session_authorization", "?"), limit)

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        if not refused:
            dbapi_connection.run_async(set_limit)

    event.listen(engine.sync_engine, "connect", on_connect)


async def extend_limits(session: AsyncSession, limits: StatementLimits) -> None:
    """Give the rest of ``session``'s transaction the limits of ``limits`` (a bulk path
    served by the API's pool); they end with the transaction. ``temp_file_limit`` only
    where the role may set it (as at connect time, :func:`_limit_temp_files`): a role
    without the right keeps the value it has, and no error aborts the transaction."""
    timeouts = limits.timeouts()
    await session.execute(
        text("SELECT set_config('statement_timeout', :statement, true), "
             "set_config('idle_in_transaction_session_timeout', :idle, true), "
             "CASE WHEN has_parameter_privilege('temp_file_limit', 'SET') "
             "THEN set_config('temp_file_limit', :temp, true) END"),
        {"statement": timeouts["statement_timeout"], "idle": timeouts["idle_in_transaction_session_timeout"],
         "temp": limits.temp_file_limit},
    )


def limit_refusal(error: BaseException) -> DomainError | None:
    """The typed refusal for a statement PostgreSQL cut at one of its limits, looking
    through SQLAlchemy's and the driver's wrappers; None for any other error."""
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return None
        sqlstate = getattr(seen, "sqlstate", None)
        if sqlstate == "57014":  # query_canceled: statement_timeout (our own cancels raise CancelledError)
            return QueryTimeout()
        if sqlstate == "53400":  # configuration_limit_exceeded: temp_file_limit
            return QueryTooLarge()
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


@asynccontextmanager
async def custom_plans(session: AsyncSession) -> AsyncIterator[None]:
    """Plan the statements inside the block for their parameters' values, every time.

    asyncpg prepares every statement it runs, and PostgreSQL may switch a prepared
    statement to a generic plan from its sixth execution on a connection. For the batch
    statements with optional filters (``CAST(:ids AS bigint[]) IS NULL OR id = ANY(…)``)
    the generic plan guesses a handful of rows and walks every account with nested loops:
    billing review at 200k accounts went from 1–2 s to 8–11 s from the sixth period on,
    in a long-lived job worker on pooled connections, while a fresh connection never
    showed it. Planning such a statement costs milliseconds. The setting is the
    transaction's (``set_config(…, true)``) and restored on leaving the block, so the
    rest of the caller's transaction is untouched (on error it is aborted anyway)."""
    previous = (await session.execute(text(
        "SELECT current_setting('plan_cache_mode'), set_config('plan_cache_mode', 'force_custom_plan', true)"
    ))).scalar_one()
    yield
    await session.execute(text("SELECT set_config('plan_cache_mode', :value, true)"), {"value": previous})


def session_factory(engine: AsyncEngine | AsyncConnection) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False, sync_session_class=_RoutedSession)


# ------------------------------------------------------------------ admitted work's pools
#
# Admitted work (an expensive GraphQL request, an export, an import: backend.slicing) runs
# its statements on pools of their own when the API process has them (create_app). On a
# host that runs the API and PostgreSQL as the same user (the embedded database of `make
# demo`, a single-host install) those pools' backends run at a lower CPU priority
# (SHUIWU_DB_ADMITTED_NICE): a year of statistics then takes a core only when the small
# requests' statements do not want it. PostgreSQL has no priority of its own for a
# statement, and an unprivileged process can lower a process's priority but never raise
# it back, so the lowered backends stay in pools that only admitted work uses.

# Keyed by the base's sync engine, weakly: an app built and dropped without its lifespan
# (tests) leaves nothing behind that a later engine could be mistaken for.
_admitted_twins: weakref.WeakKeyDictionary[Engine, AsyncEngine] = weakref.WeakKeyDictionary()


def route_admitted(engine: AsyncEngine, twin: AsyncEngine) -> None:
    """Admitted work's statements that would run on ``engine`` run on ``twin`` instead
    (:func:`raw_read` and sessions of :func:`session_factory`)."""
    _admitted_twins[engine.sync_engine] = twin


def unroute_admitted(engine: AsyncEngine) -> None:
    _admitted_twins.pop(engine.sync_engine, None)


def admitted_twin(engine: AsyncEngine) -> AsyncEngine | None:
    """The pool admitted work uses instead of ``engine``, when it has one."""
    return _admitted_twins.get(engine.sync_engine)


def for_work(engine: AsyncEngine) -> AsyncEngine:
    """``engine``, or its admitted twin inside admitted work."""
    if _admitted_twins and slicing.admitted():
        return admitted_twin(engine) or engine
    return engine


class _RoutedSession(Session):
    """A session that runs admitted work's statements on its engine's twin: SQLAlchemy's
    documented seam for choosing a bind per statement (``Session.get_bind``). The async
    session runs this in a greenlet that carries the task's context variables."""

    def get_bind(self, mapper: Any = None, **kwargs: Any) -> Any:
        bind = super().get_bind(mapper, **kwargs)
        if _admitted_twins and slicing.admitted():
            twin = _admitted_twins.get(bind) if isinstance(bind, Engine) else None
            if twin is not None:
                return twin.sync_engine
        return bind


def lower_backend_priority(engine: AsyncEngine, niceness: int) -> None:
    """Each new connection of ``engine`` asks for its backend's process id and, when that
    backend is a PostgreSQL process on this host that this user may renice, sets its nice
    value to ``niceness``. The process found under that id must be the connection's own
    backend: its title names the connection's client port (TCP) or ``[local]`` (a Unix
    socket), so a server in another PID namespace is left alone. A remote database, or
    one owned by another user, keeps its priority: nothing is changed, nothing fails."""

    async def renice(connection: Any) -> None:
        pid, port = await connection.fetchrow("SELECT pg_backend_pid(), inet_client_port()")
        if not renice_local_backend(pid, port, niceness):
            log.debug("backend %s keeps its priority (not a local process of this user)", pid)

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.run_async(renice)

    event.listen(engine.sync_engine, "connect", on_connect)


def renice_local_backend(pid: int, client_port: int | None, niceness: int) -> bool:
    """Set the nice value of backend ``pid`` if it is this connection's backend on this
    host (see :func:`lower_backend_priority`); True when done."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    marker = f"({client_port})".encode() if client_port is not None else b"[local]"
    if not title.startswith(b"postgres: ") or marker not in title:
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, pid, niceness)
    except OSError:  # another user's process, or a lower value than it has
        return False
    _renice_autogroup(pid, niceness)
    return True


def _renice_autogroup(pid: int, niceness: int) -> None:
    """With autogroup scheduling on (the Linux default for desktops and many VMs) the CPU
    is shared between sessions first and a nice value only counts inside its session.
    Every PostgreSQL backend starts a session of its own (``setsid``), so its own nice
    value alone changes nothing: the session's (``/proc/<pid>/autogroup``) is set too,
    and only when the backend is alone in it as its leader."""
    try:
        if Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() != "1" or os.getsid(pid) != pid:
            return
        Path(f"/proc/{pid}/autogroup").write_text(str(niceness))
    except OSError:
        log.debug("backend %s: its session's nice value is left as it is", pid)


@asynccontextmanager
async def transaction(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session in a transaction that commits on success and rolls back on error."""
    async with factory() as session, session.begin():
        yield session


# --------------------------------------------------------------------------- COPY


async def raw_connection(session: AsyncSession) -> Any:
    """The asyncpg connection under ``session``, inside the session's transaction.

    SQLAlchemy's asyncpg adapter sends BEGIN lazily, with the first statement it runs
    itself; a raw COPY would otherwise run in autocommit, outside the unit of work.
    """
    connection = await session.connection()
    adapter: Any = (await connection.get_raw_connection()).dbapi_connection
    if getattr(adapter, "_transaction", True) is None and hasattr(adapter, "_start_transaction"):
        async with adapter._execute_mutex:
            await adapter._start_transaction()
    elif not hasattr(adapter, "_start_transaction"):
        # Another SQLAlchemy version: make it begin through a statement of its own.
        await connection.execute(text("SELECT 1"))
    return adapter._connection


async def copy_into(
    session: AsyncSession,
    table: str,
    *,
    columns: Sequence[str],
    records: Iterable[Sequence[Any]],
    schema: str | None = None,
) -> int:
    """Bulk-insert ``records`` with COPY on the session's own connection.

    The COPY runs inside the session's transaction, so it commits or rolls back with the
    rest of the unit of work. Returns the number of rows copied.
    """
    driver = await raw_connection(session)
    status: str = await driver.copy_records_to_table(
        table, records=records, columns=list(columns), schema_name=schema
    )
    # asyncpg answers "COPY <n>".
    return int(status.split()[-1])


# --------------------------------------------------------------------------- migrations


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", to_asyncpg_url(url).replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (synchronous: call before the loop or in a thread)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


async def ping(engine: AsyncEngine) -> bool:
    async with raw_read(engine) as connection:
        await connection.fetchval("SELECT 1")
    return True


# --------------------------------------------------------------------------- column helpers


def enum_column(enum_cls: type, **kwargs: Any) -> Any:
    """A text column holding ``enum_cls`` values with a CHECK constraint (no PG enum type,
    so adding a member is a one-line migration)."""
    from sqlalchemy import Column, Enum

    return Column(
        Enum(
            enum_cls,
            native_enum=False,
            create_constraint=True,
            length=32,
            values_callable=lambda members: [member.value for member in members],
            name=f"{enum_cls.__name__.lower()}",
        ),
        **kwargs,
    )


def timestamptz(**kwargs: Any) -> Any:
    from sqlalchemy import Column, DateTime

    return Column(DateTime(timezone=True), **kwargs)


# --------------------------------------------------------------------------- raw reads


@dataclass(frozen=True, slots=True)
class AsyncpgStatement:
    """A SQLAlchemy statement compiled once to asyncpg's ``$n`` SQL and its bind order."""

    sql: str
    names: tuple[str, ...]
    # Values the statement carries itself (``func.replace(path, "_", "\\_")`` compiles
    # its literals to binds ``replace_1``…): sent as they are unless ``params`` names them.
    literals: Mapping[str, Any] = field(default_factory=dict)

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] if name in params else self.literals[name] for name in self.names]


_compiled: dict[int, tuple[Any, AsyncpgStatement]] = {}


def _asyncpg_dialect() -> Any:
    from sqlalchemy.dialects.postgresql.asyncpg import dialect

    return dialect()  # type: ignore[no-untyped-call]


ASYNCPG_DIALECT = _asyncpg_dialect()


def asyncpg_statement(statement: Any, dialect: Any = ASYNCPG_DIALECT) -> AsyncpgStatement:
    """Compile ``statement`` (a long-lived Core construct) for raw asyncpg, memoized.

    Only for statements built once at import or first use: the memo is keyed by identity
    and keeps the statement alive.
    """
    found = _compiled.get(id(statement))
    if found is not None and found[0] is statement:
        return found[1]
    compiled = statement.compile(dialect=dialect)
    names = tuple(compiled.positiontup or ())
    literals = {name: value for name, value in compiled.params.items() if not compiled.binds[name].required}
    result = AsyncpgStatement(str(compiled), names, literals)
    _compiled[id(statement)] = (statement, result)
    return result


@asynccontextmanager
async def raw_read(engine: AsyncEngine) -> AsyncIterator[Any]:
    """An asyncpg connection from ``engine``'s pool, for hot read paths.

    A SQLAlchemy session costs ~260 µs of CPU per short query on these machines, the pooled
    raw connection ~90 µs; authentication and list pages run on every request, so they
    use this. ``engine`` should be the autocommit read engine: nothing here begins or
    ends a transaction. Admitted work gets a connection of the engine's twin
    (:func:`route_admitted`).
    """
    connection = await for_work(engine).raw_connection()
    try:
        yield connection.driver_connection
    finally:
        connection.close()
