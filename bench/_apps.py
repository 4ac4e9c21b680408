"""ASGI factories for the benchmarks, configured from environment variables so that
``uvicorn --factory _apps:shuiwu_app`` / ``_apps:raw_app`` can run them in a subprocess.

- ``BENCH_DATABASE_URL``: the database (any PostgreSQL URL).
- ``BENCH_SECRET``: shuiwu's signing key (the token the bench logged in with must verify).
- ``BENCH_POOL_SIZE`` / ``BENCH_MAX_OVERFLOW``: connection pool of both apps.
- ``BENCH_SCOPE_PATHS``: comma-separated area paths the raw endpoint filters on (the same
  scope the staff user's role grants, so both apps run the same WHERE clause).

Not a benchmark itself: running this file does nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.db import to_libpq_url

# The rows the shuiwu `areas` query returns, straight from SQL: level is the path depth,
# the parent's name comes from a join; scope and order as in archives.service.areas_statement.
RAW_SQL = """
SELECT a.id, a.name, a.kind,
       length(a.path) - length(replace(a.path, '/', '')) - 1 AS level,
       p.name AS parent_name
FROM areas a LEFT JOIN areas p ON p.id = a.parent_id
WHERE a.path LIKE ANY($1::text[])
ORDER BY a.path
LIMIT $2
"""


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        raise RuntimeError(f"{name} is not set")
    return value


def _pool_settings() -> tuple[int, int]:
    return int(_env("BENCH_POOL_SIZE", "10")), int(_env("BENCH_MAX_OVERFLOW", "20"))


def shuiwu_app() -> Any:
    """The real application: GraphQL endpoint, auth, permissions, scope, DataLoaders."""
    from backend.app import create_app
    from backend.settings import Settings

    pool_size, max_overflow = _pool_settings()
    settings = Settings(
        secret_key=_env("BENCH_SECRET"),
        db_pool_size=pool_size,
        db_max_overflow=max_overflow,
        graphiql=False,
        log_level="WARNING",
    )
    return create_app(settings, _env("BENCH_DATABASE_URL"))


def raw_app() -> Starlette:
    """The floor: one POST route, no auth, one asyncpg query, ``json.dumps``."""
    pool_size, max_overflow = _pool_settings()
    patterns = [path + "%" for path in _env("BENCH_SCOPE_PATHS").split(",") if path]
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(
            to_libpq_url(_env("BENCH_DATABASE_URL")),
            min_size=pool_size,
            max_size=pool_size + max_overflow,
            server_settings={"jit": "off", "application_name": "bench-raw"},
        )
        try:
            yield
        finally:
            await state["pool"].close()

    async def rows(request: Request) -> Response:
        body = json.loads(await request.body())
        limit = int(body.get("limit", 20))
        async with state["pool"].acquire() as connection:
            records = await connection.fetch(RAW_SQL, patterns, limit)
        content = {
            "rows": [
                {"id": r["id"], "name": r["name"], "kind": r["kind"], "level": r["level"], "parent": r["parent_name"]}
                for r in records
            ]
        }
        return Response(json.dumps(content, ensure_ascii=False, separators=(",", ":")), media_type="application/json")

    async def healthz(request: Request) -> Response:
        return Response("ok")

    return Starlette(
        routes=[Route("/rows", rows, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])],
        lifespan=lifespan,
    )
