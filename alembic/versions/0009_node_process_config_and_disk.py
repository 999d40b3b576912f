"""node_process: the configuration file each serving process read, and its listener's disk guard

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 08:15:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # `status` run with another file than the node's must say so before it calls the node's
    # destinations "not configured"; and a full disk (C-STORE refused, A700) must show in
    # `status` and on the page, not only in /health and the log.
    with op.batch_alter_table('node_process', schema=None) as batch_op:
        batch_op.add_column(sa.Column('config_path', sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column('disk', sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('node_process', schema=None) as batch_op:
        batch_op.drop_column('disk')
        batch_op.drop_column('config_path')
