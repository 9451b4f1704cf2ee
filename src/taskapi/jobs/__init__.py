"""A durable job queue in PostgreSQL.

Considered pgqueuer first; chose these few functions instead because jobs must be written inside
the very SQLAlchemy transaction of the change that needs them, and the table belongs to the
Alembic-managed schema like every other.
"""
