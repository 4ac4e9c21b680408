"""pgqueuer: PgQueuer's tables, enum type, notify function and trigger

Installed with PgQueuer's own DDL (``Queries.qbe.build_install_query``) for the installed
PgQueuer version and the ``PGQUEUER_*`` settings of the environment, so the worker and
the schema agree on names. A later PgQueuer version's schema changes are applied by a new
migration calling ``Queries.upgrade()`` (``pgq upgrade``), not by editing this one.

Objects: tables pgqueuer, pgqueuer_log, pgqueuer_schedules, pgqueuer_statistics (and
their indexes), type pgqueuer_status, function fn_pgqueuer_changed, trigger
tg_pgqueuer_changed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 19:40:00
"""

from __future__ import annotations

from alembic import context, op
from pgqueuer.adapters.persistence.qb import QueryBuilderEnvironment
from sqlalchemy.util import await_

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def _run_script(sql: str) -> None:
    """Run a multi-statement script inside the migration's transaction.

    SQLAlchemy's asyncpg dialect prepares every statement, and a prepared statement
    holds one command; asyncpg's ``execute`` without arguments uses the simple query
    protocol, which takes a script (PgQueuer's function body has semicolons inside $$).
    """
    if context.is_offline_mode():
        op.execute(sql)
        return
    bind = op.get_bind()
    # Through the dialect first, so the adapter has sent BEGIN and the script joins it.
    bind.exec_driver_sql("SELECT 1")
    adapter = bind.connection.dbapi_connection
    await_(adapter._connection.execute(sql))  # type: ignore[union-attr]


def upgrade() -> None:
    _run_script(QueryBuilderEnvironment().build_install_query(create_schema=False))


def downgrade() -> None:
    _run_script(QueryBuilderEnvironment().build_uninstall_query())
