"""Revisions, oldest first: 0001 is the baseline (the last release before Alembic)."""
