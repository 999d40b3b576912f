"""node_process: each serving process's heartbeat, for `status`; job: operator retries

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 07:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # `status` says whether the node runs from these rows: with PostgreSQL, listeners and
    # workers on several hosts share the database, and only the database sees them all.
    op.create_table(
        'node_process',
        sa.Column('owner', sa.String(length=128), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('detail', sa.String(length=255), nullable=True),
        sa.Column('started_at', sa.DateTime(), nullable=False),
        sa.Column('last_seen_at', sa.DateTime(), nullable=False),
        sa.Column('stopped_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('owner', name=op.f('pk_node_process')),
    )
    # `jobs show` of a job an operator ran again: which run it is, and since when.
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retries', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('retried_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('retried_at')
        batch_op.drop_column('retries')
    op.drop_table('node_process')
