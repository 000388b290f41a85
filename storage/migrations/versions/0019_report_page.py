"""the console's report page (issue 15): internal notes, hidden and blurred photos

* `report_event.internal`: a note staff keep for themselves (never sent, never in a resident's
  history or data export);
* `report_media.hidden`: a photo staff took out of every view but staff's (not served by
  Open311, not shown to viewers nor to residents offered the report as a similar one);
* `report_media.blurred_path`: a blurred, re-encoded copy in the media store (served instead of
  the photo to viewers and publicly).

Revision ID: 0019_report_page
Revises: 0018_report_list_order
Create Date: 2026-12-02
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0019_report_page'
down_revision = '0018_report_list_order'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('report_event', sa.Column('internal', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column('report_media', sa.Column('hidden', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column('report_media', sa.Column('blurred_path', sqlmodel.sql.sqltypes.AutoString(length=500),
                                            nullable=False, server_default=''))


def downgrade() -> None:
    # plain DROP COLUMN (SQLite 3.35+ too): no table copy of tables other rows point at
    op.drop_column('report_media', 'blurred_path')
    op.drop_column('report_media', 'hidden')
    op.drop_column('report_event', 'internal')
