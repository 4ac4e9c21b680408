"""A meter model's wire settings (issue 20, item 2): ``meter_models.preamble_len`` (FE
bytes before each request, default 2), ``wire_decimals`` (places of the volumes in the
model's CJ/T 188 frames, default 2: the standard's XXXXXX.XX) and ``response_timeout_ms``
(how long the meter may take to answer; NULL: the worker's default).

Revision ID: 0041
Revises: 0038
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0041"
down_revision = "0038"
branch_labels = None
depends_on = None

_CHECKS = {
    "preamble_len_range": "preamble_len BETWEEN 0 AND 16",
    "wire_decimals_range": "wire_decimals BETWEEN 0 AND 4",
    "response_timeout_range": "response_timeout_ms BETWEEN 50 AND 60000",
}


def upgrade() -> None:
    op.add_column("meter_models", sa.Column("preamble_len", sa.Integer(), server_default="2", nullable=False))
    op.add_column("meter_models", sa.Column("wire_decimals", sa.Integer(), server_default="2", nullable=False))
    op.add_column("meter_models", sa.Column("response_timeout_ms", sa.Integer(), nullable=True))
    for name, condition in _CHECKS.items():
        op.create_check_constraint(op.f(f"ck_meter_models_{name}"), "meter_models", condition)


def downgrade() -> None:
    for name in _CHECKS:
        op.drop_constraint(op.f(f"ck_meter_models_{name}"), "meter_models", type_="check")
    op.drop_column("meter_models", "response_timeout_ms")
    op.drop_column("meter_models", "wire_decimals")
    op.drop_column("meter_models", "preamble_len")
