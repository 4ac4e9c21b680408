"""The migrations build exactly the tables the models declare (what `alembic revision
--autogenerate` would otherwise propose is a bug in a migration)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import backend.all_models  # noqa: F401
from backend.db import include_name, metadata


async def test_migrated_schema_matches_the_models(engine: AsyncEngine) -> None:
    def differences(connection: Connection) -> list[object]:
        context = MigrationContext.configure(
            connection, opts={"include_name": include_name, "compare_type": True, "target_metadata": metadata}
        )
        return list(compare_metadata(context, metadata))

    async with engine.connect() as connection:
        found = await connection.run_sync(differences)

    assert found == []
