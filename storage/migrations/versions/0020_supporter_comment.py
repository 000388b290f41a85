"""a supporter's comment: what a resident wrote when following a similar report, kept for staff

* `report_event.kind` takes 32 characters ("supporter_comment"; SQLite never enforced the 16).
* `report_media.event_id`: the supporter's comment a photo came with (NULL for the reporter's own
  photos), so that erasing the supporter deletes their photos from the followed report.

Revision ID: 0020_supporter_comment
Revises: 0019_report_page
Create Date: 2026-12-02
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0020_supporter_comment'
down_revision = '0019_report_page'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":  # SQLite's VARCHAR has no length to widen
        op.alter_column('report_event', 'kind', type_=sqlmodel.sql.sqltypes.AutoString(length=32),
                        existing_type=sa.String(length=16), existing_nullable=False)
    # Plain ADD COLUMN (no batch copy of `report_media`, which other rows point at); SQLite takes a
    # REFERENCES clause in ADD COLUMN, but not through Alembic's add_constraint.
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE report_media ADD COLUMN event_id INTEGER REFERENCES report_event (id)")
    else:
        op.add_column('report_media', sa.Column('event_id', sa.Integer(), sa.ForeignKey('report_event.id'),
                                                nullable=True))
    op.create_index(op.f('ix_report_media_event_id'), 'report_media', ['event_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_report_media_event_id'), table_name='report_media')
    if op.get_bind().dialect.name == "sqlite":  # in place (3.35+), its REFERENCES clause with it
        op.execute("ALTER TABLE report_media DROP COLUMN event_id")
    else:
        op.drop_column('report_media', 'event_id')
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DELETE FROM report_event WHERE length(kind) > 16")
        op.alter_column('report_event', 'kind', type_=sa.String(length=16),
                        existing_type=sqlmodel.sql.sqltypes.AutoString(length=32), existing_nullable=False)
