"""Periodic jobs run by Celery beat on the scheduler worker (queue ``canary.default``)."""
