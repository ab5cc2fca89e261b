"""Everything that runs inside a render worker. ``celery -A tasks`` finds ``app`` here."""

from tasks.app import app

__all__ = ["app"]
