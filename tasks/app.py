"""The Celery application shared by producers, workers, beat and Flower
(``celery -A tasks.app``, ``from tasks.app import app``).

A worker imports the ``include`` modules before its pool forks: among them the render
task and tasks.worker, which wires the worker context (tasks/worker_state.py). Importing
this module does not import them.

Each process imports only the task modules it runs (:func:`serve_only`): a render worker
the render modules (torch), the scheduler worker the periodic ones (scipy, matplotlib),
beat and Flower none (they send and show tasks by name). That keeps their start-up short
and their memory small."""

from celery import Celery

import celeryconfig
from canary.settings import Settings, get_settings
from tasks.message_privacy import HIDE_SETTING

RENDER_TASK_MODULES = ("tasks.render", "tasks.worker", "tasks.hotfix")
PERIODIC_TASK_MODULES = (
    "scheduler.maintenance",
    "scheduler.lost_messages",
    "scheduler.retention",
    "scheduler.golden_tasks",
    "scheduler.dashboards",
    "scheduler.auto_rollout",
)


def make_app(settings: Settings | None = None) -> Celery:
    """The process-wide app from celeryconfig, or one configured for explicit settings."""
    celery = Celery(
        "canary",
        amqp="tasks.message_privacy:PrivateAMQP",  # prompts masked in what Flower shows
        include=[*RENDER_TASK_MODULES, *PERIODIC_TASK_MODULES],
    )
    if settings is None:
        celery.config_from_object("celeryconfig")
    else:
        celery.config_from_object(celeryconfig.build(settings))
    celery.add_defaults({HIDE_SETTING: (settings or get_settings()).flower_hide_prompts})
    return celery


app = make_app()


def serve_only(celery: Celery, modules: tuple[str, ...]) -> None:
    """Before a worker, beat or Flower starts: import only ``modules`` as its tasks."""
    celery.conf.include = modules
