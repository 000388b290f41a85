"""Alembic environment: the metadata is SQLModel's; the connection comes from storage.migrate."""
from alembic import context
from sqlmodel import SQLModel

import storage.apikeys
import storage.attachments
import storage.health
import storage.inbox
import storage.linking
import storage.models
import storage.open311
import storage.panel
import storage.participation
import storage.reports  # noqa: F401  (problem reports)

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
