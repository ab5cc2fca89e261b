"""Everything that runs inside a render worker. Importing the package runs nothing: the
Celery app is ``tasks.app:app`` (``celery -A tasks.app``), the worker's wiring
``tasks.worker``."""
