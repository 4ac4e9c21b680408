"""Notifications (issue 19): inbox messages, SMS deliveries, push devices, preferences and
push deliveries (``backend.notifications.models``, docs/notifications.md).

Revision ID: 0031
Revises: 0030
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0031"
down_revision = "0030"
branch_labels = None
depends_on = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def upgrade() -> None:
    op.create_table('messages',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('recipient_kind', _enum('userkind', 'resident', 'staff'), nullable=False),
    sa.Column('recipient_id', sa.BigInteger(), nullable=False),
    sa.Column('household_id', sa.BigInteger(), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('data', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('dedupe_key', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('read_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_messages')),
    sa.UniqueConstraint('recipient_kind', 'recipient_id', 'dedupe_key', name='uq_messages_recipient_dedupe')
    )
    op.create_index(op.f('ix_messages_household_id'), 'messages', ['household_id'], unique=False)
    op.create_index('ix_messages_inbox', 'messages', ['recipient_kind', 'recipient_id', 'id'], unique=False)
    op.create_index('ix_messages_unread', 'messages', ['recipient_kind', 'recipient_id'], unique=False,
                    postgresql_where=sa.text('read_at IS NULL'))
    op.create_table('notification_preferences',
    sa.Column('user_kind', _enum('userkind', 'resident', 'staff'), nullable=False),
    sa.Column('user_id', sa.BigInteger(), nullable=False),
    sa.Column('muted_kinds', postgresql.ARRAY(sa.String(length=32)), server_default='{}', nullable=False),
    sa.Column('quiet_start', sa.Time(), nullable=True),
    sa.Column('quiet_end', sa.Time(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('user_kind', 'user_id', name=op.f('pk_notification_preferences'))
    )
    op.create_table('push_deliveries',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('extras', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('registration_ids', postgresql.ARRAY(sa.String(length=64)), nullable=False),
    sa.Column('message_ids', postgresql.ARRAY(sa.BigInteger()), nullable=False),
    sa.Column('state', _enum('pushstate', 'queued', 'sent', 'failed'), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.String(length=300), nullable=True),
    sa.Column('msg_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_push_deliveries'))
    )
    op.create_index('ix_push_deliveries_due', 'push_deliveries', ['next_attempt_at'], unique=False,
                    postgresql_where=sa.text("state = 'queued'"))
    op.create_table('push_devices',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('registration_id', sa.String(length=64), nullable=False),
    sa.Column('platform', _enum('deviceplatform', 'android', 'ios'), nullable=False),
    sa.Column('user_kind', _enum('userkind', 'resident', 'staff'), nullable=False),
    sa.Column('user_id', sa.BigInteger(), nullable=False),
    sa.Column('active', sa.Boolean(), server_default='true', nullable=False),
    sa.Column('registered_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_push_devices')),
    sa.UniqueConstraint('registration_id', name=op.f('uq_push_devices_registration_id'))
    )
    op.create_index('ix_push_devices_user', 'push_devices', ['user_kind', 'user_id'], unique=False, postgresql_where=sa.text('active'))
    op.create_table('sms_deliveries',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('household_id', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('dedupe_key', sa.String(length=200), nullable=False),
    sa.Column('state', _enum('smsstate', 'queued', 'sent', 'failed', 'capped'), nullable=False),
    sa.Column('phone', sa.String(length=20), nullable=True),
    sa.Column('reason', sa.String(length=300), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sms_deliveries')),
    sa.UniqueConstraint('household_id', 'dedupe_key', name='uq_sms_deliveries_household_dedupe')
    )
    op.create_index('ix_sms_deliveries_due', 'sms_deliveries', ['next_attempt_at'], unique=False,
                    postgresql_where=sa.text("state = 'queued'"))
    op.create_index('ix_sms_deliveries_household_day', 'sms_deliveries', ['household_id', 'sent_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_sms_deliveries_household_day', table_name='sms_deliveries')
    op.drop_index('ix_sms_deliveries_due', table_name='sms_deliveries', postgresql_where=sa.text("state = 'queued'"))
    op.drop_table('sms_deliveries')
    op.drop_index('ix_push_devices_user', table_name='push_devices', postgresql_where=sa.text('active'))
    op.drop_table('push_devices')
    op.drop_index('ix_push_deliveries_due', table_name='push_deliveries', postgresql_where=sa.text("state = 'queued'"))
    op.drop_table('push_deliveries')
    op.drop_table('notification_preferences')
    op.drop_index('ix_messages_unread', table_name='messages', postgresql_where=sa.text('read_at IS NULL'))
    op.drop_index('ix_messages_inbox', table_name='messages')
    op.drop_index(op.f('ix_messages_household_id'), table_name='messages')
    op.drop_table('messages')
