"""node_process: whether the disk guard refuses (a flag, not words), and the status page served

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 10:40:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('node_process', schema=None) as batch_op:
        # `status` and the page decide "refusing C-STORE" from this flag; `disk` stays the text
        # they show (reading the state back out of the text broke when the text changed).
        batch_op.add_column(sa.Column('disk_refusing', sa.Boolean(), nullable=True))
        # The page the process serves, as it was started: `status --config` with another file,
        # or a file edited since, would otherwise name a port the node does not serve.
        batch_op.add_column(sa.Column('page_url', sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('node_process', schema=None) as batch_op:
        batch_op.drop_column('page_url')
        batch_op.drop_column('disk_refusing')
