"""Celery settings, derived from canary settings (the one configuration source).

Reliability choices (see DESIGN.md): late acks so a crash redelivers the job, few messages
reserved per worker process (CANARY_PREFETCH_MULTIPLIER, 2: the running job and the next,
see tasks/pool.py), jobs of a lost worker re-queued, and a Redis visibility
timeout longer than the hard time limit (set for the broker and the result backend,
the two places Celery reads it) so a running job is never handed to a second worker.

The app (``celery -A tasks.app``, tasks/app.py) reads the module-level names; ``build()``
gives the same values for any ``Settings`` (tests, tools that talk to another broker).
Broker, queues and reliability only: the beat schedule is beat's alone, given to it where
beat starts (``scheduler.schedule.configure_beat``).
"""

from typing import Any

from kombu.entity import Exchange, Queue  # `kombu` re-exports them only implicitly

from canary.contracts import queues_for
from canary.settings import Settings, get_settings

DEFAULT_QUEUE = "canary.default"
BEAT_MAX_LOOP_S = 5
# a beat that dies without releasing the lock hands over to a waiting one after this long
BEAT_LOCK_TIMEOUT_S = 30


def build(settings: Settings) -> dict[str, Any]:
    render_exchange = Exchange("render", type="direct")  # type: ignore[no-untyped-call]  # unannotated in kombu
    queues = [
        Queue(name, render_exchange, routing_key=name)  # type: ignore[no-untyped-call]  # unannotated in kombu
        for v in settings.versions
        for name in queues_for(v)
    ]
    queues.append(Queue(DEFAULT_QUEUE, routing_key=DEFAULT_QUEUE))  # type: ignore[no-untyped-call]  # unannotated in kombu
    visibility = {"visibility_timeout": settings.visibility_timeout_s}
    # kombu sweeps for unacked messages of dead workers every 10 s but scans Redis only on
    # every 10th sweep by default: 100 s on top of the visibility timeout before a crashed
    # worker's job comes back. Scan on every sweep (one small sorted-set query per 10 s).
    # A worker consumes its version's queues in strict priority order (interactive, bulk,
    # background: canary.contracts.CLASS_ORDER, given in that order to --queues): one BRPOP
    # over the three lists, which Redis answers from the first non-empty one.
    broker_options = {
        **visibility,
        "unacked_restore_throttle": 1,
        "queue_order_strategy": "priority",
    }
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": broker_options,
        "result_backend_transport_options": visibility,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Two reserved messages per pool process, handed over first come first served
        # (tasks/pool.py): the next job waits in the process's pipe, so the accelerator is
        # not idle while the main process acknowledges the last one (docs/performance.md).
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        "worker_pool": "tasks.pool:RenderPool",
        "task_acks_on_failure_or_timeout": True,
        # After a broker connection drop the running job's message comes back; the render
        # keeps going instead of being cancelled (cancelling kills the pool process: the
        # model reloads and the recorder's finished-but-unrecorded jobs are rendered
        # again). The returned copy meets the claim guard, keyed on the worker's unique
        # node name (tasks/nodes.py): another worker leaves the job to its live holder,
        # and on this worker it waits behind the render and finds it held or finished.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # a pool process loads its model before it reports up (tasks/worker_state.py)
        "worker_proc_alive_timeout": settings.worker_start_timeout_s,
        "task_ignore_result": True,
        "task_track_started": True,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        "task_serializer": "json",
        "accept_content": ["json"],
        # beat reads crontab entries (the nightly golden run) in this zone
        "timezone": settings.golden_timezone,
        "enable_utc": True,
        # RedBeat keeps the schedule in Redis behind a lock: a second beat (a failover
        # replica, or one started by mistake) waits instead of triggering runs twice.
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "redbeat_redis_url": settings.broker_url,
        "redbeat_lock_timeout": BEAT_LOCK_TIMEOUT_S,
        "beat_max_loop_interval": BEAT_MAX_LOOP_S,
        # Flower and `celery events` show task arguments (prompt, version, job id) in full.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "resultrepr_maxsize": 4096,
        # Sending to a queue no version owns is an error, not a silently created queue.
        "task_create_missing_queues": False,
        "task_queues": queues,
        "task_default_queue": DEFAULT_QUEUE,
    }


globals().update(build(get_settings()))
