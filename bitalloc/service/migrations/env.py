"""Alembic environment: runs on the connection that bitalloc.service.db.migrate hands over."""

from __future__ import annotations

from alembic import context

from bitalloc.service.db import VERSION_TABLE
from bitalloc.service.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection, target_metadata=Base.metadata, render_as_batch=True, version_table=VERSION_TABLE
)
with context.begin_transaction():
    context.run_migrations()
