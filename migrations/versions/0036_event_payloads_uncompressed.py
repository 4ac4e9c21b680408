"""Event payloads stored without compression (issue 19, "Performance": ``bench/push.py``).

``domain_events.payload`` is written once in the business transaction and read once by
the relay, each handler and each listener. A fan-out's ``message.created`` events carry
5,000 message ids and recipients each (~150 kB); pglz compressing twenty of them was a
fifth of a 100k notice's fan-out. ``STORAGE EXTERNAL`` keeps large payloads out of line
uncompressed; small ones (nearly all events) stay inline as before.

Revision ID: 0036
Revises: 0035
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0036"
down_revision = "0035"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE domain_events ALTER COLUMN payload SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.execute("ALTER TABLE domain_events ALTER COLUMN payload SET STORAGE EXTENDED")
