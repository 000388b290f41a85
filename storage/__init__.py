"""Storage: SQLModel models, repositories, the outbox and Alembic migrations."""
