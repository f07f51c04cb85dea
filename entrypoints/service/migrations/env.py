"""Alembic's environment for the service's records: it runs on the connection the service passes."""

from alembic import context

from tuneship.entrypoints.service.db import Base

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` on the command line: -x url=...
    from sqlalchemy import create_engine

    connection = create_engine(context.get_x_argument(as_dictionary=True)["url"]).connect()

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
