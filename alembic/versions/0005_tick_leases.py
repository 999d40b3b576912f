"""tick leases: ticks that must run in one process at a time; series state index

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 04:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'tick_lease',
        sa.Column('name', sa.String(length=32), nullable=False),
        sa.Column('owner', sa.String(length=128), nullable=True),
        sa.Column('until', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_tick_lease')),
    )
    # The completion scan filters series by state: without an index it reads every series.
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_state'), ['state'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_state'))
    op.drop_table('tick_lease')
