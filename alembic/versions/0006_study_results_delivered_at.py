"""study.results_delivered_at: when the results were delivered, kept after retention deleted them

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 07:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Retention may delete results (and their delivery rows) before the received instances;
    # the instances' clock must still start at the delivery, not at the job's end.
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.add_column(sa.Column('results_delivered_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_column('results_delivered_at')
