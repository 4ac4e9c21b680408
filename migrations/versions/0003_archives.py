"""archives: area details, households completed with owners and status history, meter
models, meters, concentrators, collectors, meter assignments and replacements.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 20:06:04.466909
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('meter_models',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('vendor', sa.String(length=100), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('protocol', sa.String(length=32), server_default='cjt188', nullable=False),
    sa.Column('caliber', sa.Integer(), nullable=False),
    sa.Column('register_digits', sa.Integer(), server_default='5', nullable=False),
    sa.Column('register_decimals', sa.Integer(), server_default='3', nullable=False),
    sa.Column('multiplier', sa.Numeric(precision=12, scale=4), server_default='1', nullable=False),
    sa.Column('has_valve', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('has_battery', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('di_byte_order', sa.Enum('901F', '1F90', name='dibyteorder', native_enum=False, create_constraint=True, length=32), server_default='901F', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('caliber BETWEEN 15 AND 300', name=op.f('ck_meter_models_caliber_range')),
    sa.CheckConstraint('multiplier > 0', name=op.f('ck_meter_models_multiplier_positive')),
    sa.CheckConstraint('register_digits BETWEEN 1 AND 12 AND register_decimals BETWEEN 0 AND 4', name=op.f('ck_meter_models_register_range')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_meter_models')),
    sa.UniqueConstraint('vendor', 'name', name=op.f('uq_meter_models_vendor_name'))
    )
    op.create_table('concentrators',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('region_code', sa.String(length=4), nullable=False),
    sa.Column('terminal_address', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=100), nullable=True),
    sa.Column('protocol', sa.String(length=32), server_default='gdw1376', nullable=False),
    sa.Column('connection', sa.Enum('tcp_login', 'serial', 'dtu_socket', name='connectionkind', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('serial_url', sa.String(length=200), nullable=True),
    sa.Column('baudrate', sa.Integer(), nullable=True),
    sa.Column('parity', sa.String(length=1), nullable=True),
    sa.Column('bytesize', sa.Integer(), nullable=True),
    sa.Column('stopbits', sa.String(length=3), nullable=True),
    sa.Column('host', sa.String(length=200), nullable=True),
    sa.Column('port', sa.Integer(), nullable=True),
    sa.Column('terminal_password_encrypted', sa.String(length=500), nullable=True),
    sa.Column('status', sa.Enum('active', 'offline', 'retired', name='devicestatus', native_enum=False, create_constraint=True, length=32), server_default='active', nullable=False),
    sa.Column('area_id', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['area_id'], ['areas.id'], name=op.f('fk_concentrators_area_id_areas')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_concentrators')),
    sa.UniqueConstraint('region_code', 'terminal_address', name=op.f('uq_concentrators_region_code_terminal_address'))
    )
    op.create_index(op.f('ix_concentrators_area_id'), 'concentrators', ['area_id'], unique=False)
    op.create_table('collectors',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('concentrator_id', sa.BigInteger(), nullable=False),
    sa.Column('address', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['concentrator_id'], ['concentrators.id'], name=op.f('fk_collectors_concentrator_id_concentrators')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_collectors')),
    sa.UniqueConstraint('concentrator_id', 'address', name=op.f('uq_collectors_concentrator_id_address'))
    )
    op.create_index(op.f('ix_collectors_concentrator_id'), 'collectors', ['concentrator_id'], unique=False)
    op.create_table('household_owners',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('household_id', sa.BigInteger(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('phone', sa.String(length=20), nullable=True),
    sa.Column('id_number', sa.String(length=32), nullable=True),
    sa.Column('valid_from', sa.Date(), nullable=False),
    sa.Column('valid_to', sa.Date(), nullable=True),
    sa.CheckConstraint('valid_to IS NULL OR valid_to >= valid_from', name=op.f('ck_household_owners_valid_range')),
    sa.ForeignKeyConstraint(['household_id'], ['households.id'], name=op.f('fk_household_owners_household_id_households')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_household_owners'))
    )
    op.create_index(op.f('ix_household_owners_household_id'), 'household_owners', ['household_id'], unique=False)
    op.create_index('uq_household_owners_current', 'household_owners', ['household_id'], unique=True, postgresql_where=sa.text('valid_to IS NULL'))
    op.create_table('household_status_history',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('household_id', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.Enum('active', 'suspended', 'closed', name='householdstatus', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('reason', sa.Text(), server_default='', nullable=False),
    sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('changed_by', sa.String(length=100), nullable=False),
    sa.ForeignKeyConstraint(['household_id'], ['households.id'], name=op.f('fk_household_status_history_household_id_households')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_household_status_history'))
    )
    op.create_index(op.f('ix_household_status_history_household_id'), 'household_status_history', ['household_id'], unique=False)
    op.create_table('meters',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('protocol', sa.String(length=32), server_default='cjt188', nullable=False),
    sa.Column('address', sa.String(length=32), nullable=False),
    sa.Column('meter_type', sa.Enum('cold_water', 'hot_water', 'flow_monitor', 'pressure_monitor', name='metertype', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('kind', sa.Enum('household', 'monitoring', name='meterkind', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('model_id', sa.BigInteger(), nullable=True),
    sa.Column('install_date', sa.Date(), nullable=True),
    sa.Column('initial_reading', sa.Numeric(precision=16, scale=4), server_default='0', nullable=False),
    sa.Column('location', sa.String(length=200), nullable=True),
    sa.Column('area_id', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.Enum('in_stock', 'installed', 'faulty', 'retired', name='meterstatus', native_enum=False, create_constraint=True, length=32), server_default='in_stock', nullable=False),
    sa.Column('concentrator_id', sa.BigInteger(), nullable=True),
    sa.Column('collector_id', sa.BigInteger(), nullable=True),
    sa.Column('port', sa.Integer(), nullable=True),
    sa.Column('measurement_point', sa.Integer(), nullable=True),
    sa.Column('mqtt_topic', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['area_id'], ['areas.id'], name=op.f('fk_meters_area_id_areas')),
    sa.ForeignKeyConstraint(['collector_id'], ['collectors.id'], name=op.f('fk_meters_collector_id_collectors')),
    sa.ForeignKeyConstraint(['concentrator_id'], ['concentrators.id'], name=op.f('fk_meters_concentrator_id_concentrators')),
    sa.ForeignKeyConstraint(['model_id'], ['meter_models.id'], name=op.f('fk_meters_model_id_meter_models')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_meters')),
    sa.UniqueConstraint('code', name=op.f('uq_meters_code')),
    sa.UniqueConstraint('protocol', 'address', name=op.f('uq_meters_protocol_address'))
    )
    op.create_index('ix_meters_address_prefix', 'meters', ['address'], unique=False, postgresql_ops={'address': 'text_pattern_ops'})
    op.create_index(op.f('ix_meters_area_id'), 'meters', ['area_id'], unique=False)
    op.create_index(op.f('ix_meters_collector_id'), 'meters', ['collector_id'], unique=False)
    op.create_index(op.f('ix_meters_concentrator_id'), 'meters', ['concentrator_id'], unique=False)
    op.create_index(op.f('ix_meters_model_id'), 'meters', ['model_id'], unique=False)
    op.create_table('meter_assignments',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('meter_id', sa.BigInteger(), nullable=False),
    sa.Column('household_id', sa.BigInteger(), nullable=False),
    sa.Column('valid_from', sa.DateTime(timezone=True), nullable=False),
    sa.Column('valid_to', sa.DateTime(timezone=True), nullable=True),
    sa.Column('start_reading', sa.Numeric(precision=16, scale=4), nullable=False),
    sa.Column('end_reading', sa.Numeric(precision=16, scale=4), nullable=True),
    sa.CheckConstraint('valid_to IS NULL OR valid_to >= valid_from', name=op.f('ck_meter_assignments_valid_range')),
    sa.ForeignKeyConstraint(['household_id'], ['households.id'], name=op.f('fk_meter_assignments_household_id_households')),
    sa.ForeignKeyConstraint(['meter_id'], ['meters.id'], name=op.f('fk_meter_assignments_meter_id_meters')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_meter_assignments'))
    )
    op.create_index(op.f('ix_meter_assignments_household_id'), 'meter_assignments', ['household_id'], unique=False)
    op.create_index(op.f('ix_meter_assignments_meter_id'), 'meter_assignments', ['meter_id'], unique=False)
    op.create_index('uq_meter_assignments_current', 'meter_assignments', ['meter_id'], unique=True, postgresql_where=sa.text('valid_to IS NULL'))
    op.create_table('meter_replacements',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('household_id', sa.BigInteger(), nullable=False),
    sa.Column('old_meter_id', sa.BigInteger(), nullable=False),
    sa.Column('new_meter_id', sa.BigInteger(), nullable=False),
    sa.Column('replaced_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('old_final_reading', sa.Numeric(precision=16, scale=4), nullable=False),
    sa.Column('new_initial_reading', sa.Numeric(precision=16, scale=4), nullable=False),
    sa.Column('reason', sa.Text(), server_default='', nullable=False),
    sa.Column('replaced_by', sa.String(length=100), nullable=False),
    sa.ForeignKeyConstraint(['household_id'], ['households.id'], name=op.f('fk_meter_replacements_household_id_households')),
    sa.ForeignKeyConstraint(['new_meter_id'], ['meters.id'], name=op.f('fk_meter_replacements_new_meter_id_meters')),
    sa.ForeignKeyConstraint(['old_meter_id'], ['meters.id'], name=op.f('fk_meter_replacements_old_meter_id_meters')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_meter_replacements'))
    )
    op.create_index(op.f('ix_meter_replacements_household_id'), 'meter_replacements', ['household_id'], unique=False)
    op.create_index(op.f('ix_meter_replacements_new_meter_id'), 'meter_replacements', ['new_meter_id'], unique=False)
    op.create_index(op.f('ix_meter_replacements_old_meter_id'), 'meter_replacements', ['old_meter_id'], unique=False)
    op.add_column('areas', sa.Column('code', sa.String(length=32), nullable=True))
    op.add_column('areas', sa.Column('address', sa.String(length=200), nullable=True))
    op.add_column('areas', sa.Column('latitude', sa.Numeric(precision=9, scale=6), nullable=True))
    op.add_column('areas', sa.Column('longitude', sa.Numeric(precision=9, scale=6), nullable=True))
    op.create_unique_constraint(op.f('uq_areas_code'), 'areas', ['code'])
    op.add_column('households', sa.Column('phone', sa.String(length=20), nullable=True))
    op.add_column('households', sa.Column('phone2', sa.String(length=20), nullable=True))
    op.add_column('households', sa.Column('id_number', sa.String(length=32), nullable=True))
    op.add_column('households', sa.Column('address', sa.String(length=200), server_default='', nullable=False))
    op.add_column('households', sa.Column('customer_type', sa.Enum('residential', 'non_residential', 'special', name='customertype', native_enum=False, create_constraint=True, length=32), server_default='residential', nullable=False))
    op.add_column('households', sa.Column('sub_type', sa.String(length=50), nullable=True))
    op.add_column('households', sa.Column('population', sa.Integer(), server_default='3', nullable=False))
    op.add_column('households', sa.Column('status', sa.Enum('active', 'suspended', 'closed', name='householdstatus', native_enum=False, create_constraint=True, length=32), server_default='active', nullable=False))
    op.add_column('households', sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False))
    op.create_index(op.f('ix_households_phone'), 'households', ['phone'], unique=False)
    op.create_check_constraint(op.f('ck_households_population_range'), 'households', 'population BETWEEN 1 AND 99')
    # Every household has a current owner row (过户 history starts with the registered name).
    op.execute(
        "INSERT INTO household_owners (household_id, name, valid_from) "
        "SELECT id, name, (created_at AT TIME ZONE 'Asia/Shanghai')::date FROM households"
    )


def downgrade() -> None:
    op.drop_constraint(op.f('ck_households_population_range'), 'households', type_='check')
    op.drop_index(op.f('ix_households_phone'), table_name='households')
    op.drop_column('households', 'updated_at')
    op.drop_column('households', 'status')
    op.drop_column('households', 'population')
    op.drop_column('households', 'sub_type')
    op.drop_column('households', 'customer_type')
    op.drop_column('households', 'address')
    op.drop_column('households', 'id_number')
    op.drop_column('households', 'phone2')
    op.drop_column('households', 'phone')
    op.drop_constraint(op.f('uq_areas_code'), 'areas', type_='unique')
    op.drop_column('areas', 'longitude')
    op.drop_column('areas', 'latitude')
    op.drop_column('areas', 'address')
    op.drop_column('areas', 'code')
    op.drop_index(op.f('ix_meter_replacements_old_meter_id'), table_name='meter_replacements')
    op.drop_index(op.f('ix_meter_replacements_new_meter_id'), table_name='meter_replacements')
    op.drop_index(op.f('ix_meter_replacements_household_id'), table_name='meter_replacements')
    op.drop_table('meter_replacements')
    op.drop_index('uq_meter_assignments_current', table_name='meter_assignments', postgresql_where=sa.text('valid_to IS NULL'))
    op.drop_index(op.f('ix_meter_assignments_meter_id'), table_name='meter_assignments')
    op.drop_index(op.f('ix_meter_assignments_household_id'), table_name='meter_assignments')
    op.drop_table('meter_assignments')
    op.drop_index(op.f('ix_meters_model_id'), table_name='meters')
    op.drop_index(op.f('ix_meters_concentrator_id'), table_name='meters')
    op.drop_index(op.f('ix_meters_collector_id'), table_name='meters')
    op.drop_index(op.f('ix_meters_area_id'), table_name='meters')
    op.drop_index('ix_meters_address_prefix', table_name='meters', postgresql_ops={'address': 'text_pattern_ops'})
    op.drop_table('meters')
    op.drop_index(op.f('ix_household_status_history_household_id'), table_name='household_status_history')
    op.drop_table('household_status_history')
    op.drop_index('uq_household_owners_current', table_name='household_owners', postgresql_where=sa.text('valid_to IS NULL'))
    op.drop_index(op.f('ix_household_owners_household_id'), table_name='household_owners')
    op.drop_table('household_owners')
    op.drop_index(op.f('ix_collectors_concentrator_id'), table_name='collectors')
    op.drop_table('collectors')
    op.drop_index(op.f('ix_concentrators_area_id'), table_name='concentrators')
    op.drop_table('concentrators')
    op.drop_table('meter_models')
