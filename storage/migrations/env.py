"""Alembic environment: the metadata is SQLModel's; the connection comes from storage.migrate."""
from alembic import context
from sqlmodel import SQLModel

import storage.models  # noqa: F401  (registers the tables)
import storage.participation  # noqa: F401  (volunteer pools, events, reminders)
import storage.apikeys  # noqa: F401  (Open311 API keys)
import storage.open311  # noqa: F401  (the reports Open311 clients created)
import storage.reports  # noqa: F401  (problem reports)
import storage.linking  # noqa: F401  (link codes: one resident, several channels)
import storage.inbox  # noqa: F401  (inbound messages accepted before they are handled)
import storage.health  # noqa: F401  (the row /health writes)
import storage.attachments  # noqa: F401  (who sent which stored file)
import storage.panel  # noqa: F401  (the staff console: departments, sign-in links, sessions)

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        from storage.db import make_engine

        engine = make_engine(config.get_main_option("sqlalchemy.url"))
        with engine.connect() as connection:
            _run(connection)
        return
    _run(connection)


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
