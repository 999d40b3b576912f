"""job: the 'skipped' state with its reason, and warnings for results that went out incomplete

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 20:40:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

_BEFORE = ('queued', 'running', 'succeeded', 'dead', 'cancelled', 'superseded')
_AFTER = (*_BEFORE, 'skipped')


def _state(values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*values, name='job_state', native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    # A study too small to analyse, or not a head, ends 'skipped' with a reason: neither
    # dead (nothing failed) nor retried. The state's CHECK constraint is widened for it.
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.alter_column('state', existing_type=_state(_BEFORE), type_=_state(_AFTER), existing_nullable=False)
        batch_op.add_column(sa.Column('warnings', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('reason', sa.Text(), nullable=True))


def downgrade() -> None:
    op.execute("UPDATE job SET state = 'dead', last_error = reason WHERE state = 'skipped'")
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('reason')
        batch_op.drop_column('warnings')
        batch_op.alter_column('state', existing_type=_state(_AFTER), type_=_state(_BEFORE), existing_nullable=False)
