"""the staff console: roles, departments, sign-in links, sessions, TOTP; the terminal name of staff

* `staff`: `console` (the `katilim chat --as NAME` of a staff member, which used to be kept in
  `name` as "console:NAME", so that `katilim staff add --console NAME --name "Ayşe Yılmaz"` keeps
  both), `active`, `panel_locale`, `totp_secret`, `totp_enabled_at`, `totp_last_timecode`.
  Existing "console:NAME" names move to `console`, and `name` becomes NAME; the way back puts
  "console:NAME" into `name` again.
* `staff_department`: the departments (catalog keys) a staff member works for.
* `panel_login_token`, `panel_session`: one-time sign-in links and console sessions (hashes only).

Revision ID: 0016_panel
Revises: 0015_erasure
Create Date: 2026-12-02
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0016_panel'
down_revision = '0015_erasure'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (no batch copy of `staff`): the new tables below point at it.
    op.add_column('staff', sa.Column('console', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
    op.add_column('staff', sa.Column('active', sa.Boolean(), nullable=False, server_default=sa.true()))
    op.add_column('staff', sa.Column('panel_locale', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False,
                                     server_default='tr'))
    op.add_column('staff', sa.Column('totp_secret', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False,
                                     server_default=''))
    op.add_column('staff', sa.Column('totp_enabled_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.add_column('staff', sa.Column('totp_last_timecode', sa.Integer(), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, name FROM staff WHERE name LIKE 'console:%'")).all()
    for staff_id, name in rows:
        console = name[len("console:"):]
        conn.execute(sa.text("UPDATE staff SET console = :c, name = :c WHERE id = :i"), {"c": console, "i": staff_id})
    op.create_index('ix_staff_console', 'staff', ['console'], unique=True)

    op.create_table('staff_department',
    sa.Column('staff_id', sa.Integer(), nullable=False),
    sa.Column('department', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.ForeignKeyConstraint(['staff_id'], ['staff.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('staff_id', 'department')
    )
    op.create_table('panel_login_token',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('staff_id', sa.Integer(), nullable=False),
    sa.Column('issued_via', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('used_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['staff_id'], ['staff.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_index(op.f('ix_panel_login_token_staff_id'), 'panel_login_token', ['staff_id'], unique=False)
    op.create_table('panel_session',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('staff_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('last_seen_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('mfa_ok', sa.Boolean(), nullable=False),
    sa.Column('revoked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('user_agent', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('ip', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.ForeignKeyConstraint(['staff_id'], ['staff.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_index(op.f('ix_panel_session_staff_id'), 'panel_session', ['staff_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_panel_session_staff_id'), table_name='panel_session')
    op.drop_table('panel_session')
    op.drop_index(op.f('ix_panel_login_token_staff_id'), table_name='panel_login_token')
    op.drop_table('panel_login_token')
    op.drop_table('staff_department')
    conn = op.get_bind()
    conn.execute(sa.text("UPDATE staff SET name = 'console:' || console WHERE console IS NOT NULL"))
    op.drop_index('ix_staff_console', table_name='staff')
    for column in ('totp_last_timecode', 'totp_enabled_at', 'totp_secret', 'panel_locale', 'active', 'console'):
        op.drop_column('staff', column)
