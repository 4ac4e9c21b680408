"""Messages: the dedupe key leads the unique index, and the unused household index goes
(issue 19, "Performance": ``bench/push.py``).

- ``uq_messages_recipient_dedupe`` (recipient kind, recipient id, dedupe key) becomes
  ``uq_messages_dedupe_recipient`` (dedupe key, recipient kind, recipient id): the same
  uniqueness, but "has anyone a message with this key yet?" is one index probe, so a
  fan-out whose key is new inserts without ON CONFLICT's speculative insertion
  (``notifications.service``), and a fan-out's 100k entries land side by side under
  their one key instead of once inside each recipient's range. The inbox reads by
  recipient through ``ix_messages_inbox`` and ``ix_messages_unread``, as before.
- ``ix_messages_household_id``: no statement reads messages by household; every message
  paid an index entry for it.
- ``push_deliveries.registration_ids`` / ``message_ids`` are stored out of line without
  compression (``STORAGE EXTERNAL``): a 1000-id batch is ~25 kB that pglz compressed at
  insert for little gain (registration ids and ascending ids), and that was ~0.2 s of a
  100k fan-out's 150 batches; the push job reads each batch once.

Revision ID: 0035
Revises: 0034
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0035"
down_revision = "0034"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_messages_household_id", table_name="messages")
    op.drop_constraint("uq_messages_recipient_dedupe", "messages", type_="unique")
    op.create_unique_constraint("uq_messages_dedupe_recipient", "messages",
                                ["dedupe_key", "recipient_kind", "recipient_id"])
    op.execute("ALTER TABLE push_deliveries ALTER COLUMN registration_ids SET STORAGE EXTERNAL, "
               "ALTER COLUMN message_ids SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.execute("ALTER TABLE push_deliveries ALTER COLUMN registration_ids SET STORAGE EXTENDED, "
               "ALTER COLUMN message_ids SET STORAGE EXTENDED")
    op.drop_constraint("uq_messages_dedupe_recipient", "messages", type_="unique")
    op.create_unique_constraint("uq_messages_recipient_dedupe", "messages",
                                ["recipient_kind", "recipient_id", "dedupe_key"])
    op.create_index("ix_messages_household_id", "messages", ["household_id"], unique=False)
