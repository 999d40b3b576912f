"""tick leases: ticks that must run in one process at a time

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


def downgrade() -> None:
    op.drop_table('tick_lease')
