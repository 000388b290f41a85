"""the daily overdue summary (issue 15): the day each staff member's summary was made

* `overdue_summary` (staff_id, day): one row per staff member and local day, written with the
  summary's outbox row (or when there was nothing to tell), so that the "overdue_summary" job
  tells each staff member at most once a day, whatever the number of workers and restarts.

Revision ID: 0021_overdue_summary
Revises: 0020_supporter_comment
Create Date: 2026-12-02
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0021_overdue_summary'
down_revision = '0020_supporter_comment'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('overdue_summary',
    sa.Column('staff_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('overdue', sa.Integer(), nullable=False),
    sa.Column('made_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['staff_id'], ['staff.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('staff_id', 'day')
    )


def downgrade() -> None:
    op.drop_table('overdue_summary')
