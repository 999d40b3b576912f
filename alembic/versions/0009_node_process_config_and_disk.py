"""node_process: the configuration file each process read, its disk guard; delivery: resends

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
        # The pid a reload (SIGHUP) goes to: `dicom-node run`'s supervisor, not its children.
        batch_op.add_column(sa.Column('reload_pid', sa.Integer(), nullable=True))
    # `jobs show` after `resend`: the attempt count restarts, so how often and when it was
    # resent is kept apart (else "sent, 1 attempt(s)" hides the resend).
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resends', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('resent_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_column('resent_at')
        batch_op.drop_column('resends')
    with op.batch_alter_table('node_process', schema=None) as batch_op:
        batch_op.drop_column('reload_pid')
        batch_op.drop_column('disk')
        batch_op.drop_column('config_path')
