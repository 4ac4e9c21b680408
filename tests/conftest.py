"""Test infrastructure (DESIGN.md, "Tests").

- One PostgreSQL for the run: the embedded server in a temporary directory (fsync off),
  or the external server named by ``SHUIWU_TEST_EXTERNAL_URL`` (the smoke run).
- Migrations run once, into a template database named per run.
- ``session``: a service-test session inside a transaction that is rolled back; the code
  under test may commit, which only releases a savepoint.
- ``database_url`` (per module): a database of its own cloned from the template, for tests
  that need real commits (HTTP, concurrency, NOTIFY, workers).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.db import create_engine, migrate, run_admin, session_factory, start_embedded, stop_embedded, with_database
from backend.domains import install
from tests.sample_domain.domain import DOMAIN as NOTES

# anyio imports its submodules on first use, and pytest rewrites them (anyio is a pytest
# plugin). A first use inside a live server's thread (Starlette's StaticFiles opening a
# file) then parses source on a deep stack, which CPython 3.11.7 can fail with
# "SystemError: AST constructor recursion depth mismatch": load them all here, once.
for _lazy in dir(anyio):
    getattr(anyio, _lazy)

# The test domain (tests/sample_domain) is installed for the whole run, before any test
# module builds a schema: every test that walks the installed domains (the permission
# walk, the property tests, the catalog, the demo) walks it too. The drift test compares
# the real domains' schema (backend.domains.DOMAINS) with schema.graphql.
install(NOTES)

# Live servers, a running job worker and local fake gateways (tests/fixtures/).
pytest_plugins = ["tests.fixtures.live", "tests.fixtures.gateways"]

RUN_ID = uuid.uuid4().hex[:8]
EXTERNAL_URL = os.environ.get("SHUIWU_TEST_EXTERNAL_URL") or None


_admin = run_admin


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """The server every test database lives on."""
    if EXTERNAL_URL:
        yield EXTERNAL_URL
        return
    pgdata = Path(tempfile.mkdtemp(prefix="shuiwu-test-")) / "pgdata"
    url = start_embedded(pgdata)
    # Durability is pointless for throwaway test data; these settle at reload.
    _admin(
        url,
        "ALTER SYSTEM SET fsync = off",
        "ALTER SYSTEM SET full_page_writes = off",
        "ALTER SYSTEM SET synchronous_commit = off",
        "SELECT pg_reload_conf()",
    )
    yield url
    stop_embedded()


@pytest.fixture(scope="session")
def template_url(server_url: str) -> Iterator[str]:
    """A migrated database that every test database is cloned from."""
    name = f"shuiwu_tpl_{RUN_ID}"
    _admin(server_url, f'CREATE DATABASE "{name}"')
    url = with_database(server_url, name)
    migrate(url)
    yield url
    _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def clone_database(server_url: str, template_url: str, label: str) -> str:
    template = template_url.split("?")[0].rsplit("/", 1)[1]
    name = f"shuiwu_{label}_{RUN_ID}_{uuid.uuid4().hex[:6]}"[:63]
    _admin(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return with_database(server_url, name)


def drop_database(server_url: str, url: str) -> None:
    name = url.split("?")[0].rsplit("/", 1)[1]
    _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def small_demo_url(server_url: str, template_url: str) -> Iterator[str]:
    """The small demo (tests/small_demo.py), loaded once per run; modules clone it."""
    from backend.demo import load_demo
    from tests.small_demo import HOUSEHOLDS, NOW, SEED

    url = clone_database(server_url, template_url, "smalldemo")

    async def load() -> None:
        engine = create_engine(url, pool_size=1, max_overflow=0)
        async with session_factory(engine)() as session, session.begin():
            await load_demo(session, households=HOUSEHOLDS, seed=SEED, readings=True, now=NOW)
        await engine.dispose()  # a template takes no connections

    anyio.run(load)
    yield url
    drop_database(server_url, url)


@pytest.fixture(scope="session")
def service_database_url(server_url: str, template_url: str) -> Iterator[str]:
    url = clone_database(server_url, template_url, "svc")
    yield url
    drop_database(server_url, url)


@pytest.fixture(scope="session")
async def engine(service_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(service_database_url, pool_size=2, max_overflow=2)
    yield engine
    await engine.dispose()


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session whose every change is rolled back after the test."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        async with AsyncSession(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        ) as test_session:
            yield test_session
        await transaction.rollback()


@pytest.fixture(scope="module")
def database_url(server_url: str, template_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A committed database of this module's own, cloned from the template."""
    label = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")[:20]
    url = clone_database(server_url, template_url, label)
    yield url
    drop_database(server_url, url)


@pytest.fixture(scope="module")
async def committed_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on this module's own database: what it commits stays for the module."""
    engine = create_engine(database_url, pool_size=2, max_overflow=2)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
def committed_sessions(committed_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(committed_engine)
