"""Alembic migrations of the schema (env.py, versions/); run through storage.migrate."""
