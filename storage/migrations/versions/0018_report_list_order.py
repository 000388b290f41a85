"""the console's list and live updates at scale (issue 15): report (created_at, id) for the
newest-first list and the map, report (updated_at, id) for the live updates' cursor

Revision ID: 0018_report_list_order
Revises: 0017_report_triage
Create Date: 2026-12-02
"""
from alembic import op

revision = '0018_report_list_order'
down_revision = '0017_report_triage'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_report_created_id', 'report', ['created_at', 'id'], unique=False)
    op.create_index('ix_report_updated_id', 'report', ['updated_at', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_report_updated_id', table_name='report')
    op.drop_index('ix_report_created_id', table_name='report')
