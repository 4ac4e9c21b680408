"""NB-IoT meters over MQTT (issue 20, item 2): per meter model, what the device publishes
(``payload_format``: a CJ/T 188 frame or JSON) and how long a command waits for its next
uplink (``uplink_wait_s``, 24 h by default); and an index on ``meters.mqtt_topic``, what
the MQTT coordinator looks each uplink's meter up by.

Enum columns are text with a CHECK constraint (``backend.db.enum_column``): the new one
gets its own constraint, no type to alter.

Revision ID: 0040
Revises: 0041
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0040"
down_revision = "0041"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("meter_models", sa.Column(
        "payload_format",
        sa.Enum("cjt188", "json", name="payloadformat", native_enum=False, create_constraint=True, length=32),
        server_default="cjt188", nullable=False))
    op.add_column("meter_models", sa.Column("uplink_wait_s", sa.Integer(), server_default="86400", nullable=False))
    op.create_check_constraint(op.f("ck_meter_models_uplink_wait_range"), "meter_models",
                               "uplink_wait_s BETWEEN 1 AND 604800")
    op.create_index("ix_meters_mqtt_topic", "meters", ["mqtt_topic"], postgresql_where=sa.text("mqtt_topic IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_meters_mqtt_topic", table_name="meters")
    op.drop_constraint(op.f("ck_meter_models_uplink_wait_range"), "meter_models", type_="check")
    op.drop_column("meter_models", "uplink_wait_s")
    op.drop_column("meter_models", "payload_format")
