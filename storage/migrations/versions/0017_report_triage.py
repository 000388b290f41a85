"""report triage for the staff console (issue 15): department, assignee, due time, response times

* `report.department`: the category's department (catalog key) when the report was filed;
* `report.assignee_id`: the staff member it is assigned to (NULL: nobody);
* `report.due_at`: when the category's target response time runs out (UTC; NULL: no target);
* `report.first_response_at`, `report.closed_at`: the first staff answer, the closing;
* `report.search_text`: the folded words of a free-text search (code, category, mahalle,
  description); existing rows get their code, keys and description here, the catalog's names
  when they are next edited;
* indexes for the console's list and map: (status, created_at), (department, status,
  created_at), (mahalle, created_at).

Revision ID: 0017_report_triage
Revises: 0016_panel
Create Date: 2026-12-02
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0017_report_triage'
down_revision = '0016_panel'
branch_labels = None
depends_on = None

COLUMNS = ('department', 'assignee_id', 'due_at', 'first_response_at', 'closed_at', 'search_text')


def upgrade() -> None:
    from storage.fold import fold

    # Plain ADD COLUMN (no batch copy of `report`: other tables point at it); the assignee's
    # foreign key is declared inline, which SQLite accepts on a column whose default is NULL.
    conn = op.get_bind()
    op.add_column('report', sa.Column('department', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False,
                                      server_default=''))
    if conn.dialect.name == 'sqlite':
        conn.execute(sa.text("ALTER TABLE report ADD COLUMN assignee_id INTEGER REFERENCES staff (id)"))
    else:
        op.add_column('report', sa.Column('assignee_id', sa.Integer(), nullable=True))
        op.create_foreign_key('fk_report_assignee_id_staff', 'report', 'staff', ['assignee_id'], ['id'])
    op.add_column('report', sa.Column('due_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.add_column('report', sa.Column('first_response_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.add_column('report', sa.Column('closed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.add_column('report', sa.Column('search_text', sa.Text(), nullable=False, server_default=''))
    rows = conn.execute(sa.text("SELECT id, code, category, mahalle, description FROM report")).all()
    for report_id, code, category, mahalle, description in rows:
        words = fold(" ".join(w for w in (code, category, mahalle or "", description or "") if w))
        conn.execute(sa.text("UPDATE report SET search_text = :w WHERE id = :i"), {"w": words, "i": report_id})
    conn.execute(sa.text("UPDATE report SET closed_at = updated_at "
                         "WHERE status IN ('resolved', 'rejected', 'merged')"))
    op.create_index(op.f('ix_report_department'), 'report', ['department'], unique=False)
    op.create_index(op.f('ix_report_assignee_id'), 'report', ['assignee_id'], unique=False)
    op.create_index(op.f('ix_report_due_at'), 'report', ['due_at'], unique=False)
    op.create_index('ix_report_status_created', 'report', ['status', 'created_at'], unique=False)
    op.create_index('ix_report_department_status', 'report', ['department', 'status', 'created_at'], unique=False)
    op.create_index('ix_report_mahalle_created', 'report', ['mahalle', 'created_at'], unique=False)


def downgrade() -> None:
    for name in ('ix_report_mahalle_created', 'ix_report_department_status', 'ix_report_status_created',
                 'ix_report_due_at', 'ix_report_assignee_id', 'ix_report_department'):
        op.drop_index(name, table_name='report')
    conn = op.get_bind()
    if conn.dialect.name == 'sqlite':
        # SQLite (3.35+) drops a column in place, even one with its own REFERENCES clause; a batch
        # copy of `report` would fail, as other tables' foreign keys point at it.
        for column in COLUMNS:
            conn.execute(sa.text(f"ALTER TABLE report DROP COLUMN {column}"))
    else:
        op.drop_constraint('fk_report_assignee_id_staff', 'report', type_='foreignkey')
        for column in COLUMNS:
            op.drop_column('report', column)
