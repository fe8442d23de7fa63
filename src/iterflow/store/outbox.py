"""Wake-up jobs in procrastinate's queue, written with plain SQL inside our own transactions.

The job for a run has ``lock = run_id`` (one attempt per run at a time) and
``queueing_lock = run_id`` (one queued wake-up per run). A second wake-up for the same run merges
into the queued one and keeps the **earliest** due time; it never aborts the transaction. A merge
that makes the job due now sends procrastinate's ``job_inserted`` notification itself (its trigger
only fires on INSERT), so e.g. a signal is picked up at once rather than at the next poll. The
engine owns retries and timers, so procrastinate's own retry is never used for this task.
"""

from __future__ import annotations

__all__ = ["TASK_NAME", "reconcile_task_name", "wake_insert_sql"]

#: The procrastinate task every wake-up job runs.
TASK_NAME = "iterflow.advance"


def reconcile_task_name(schema: str) -> str:
    """The procrastinate task of the periodic reconciler for the tables in ``schema``."""
    return f"iterflow.reconcile.{schema}"


def wake_insert_sql(
    source: str,
    run_id_expr: str = "id",
    *,
    wake_at: str = ":wake_at",
    priority: str = ":priority",
) -> str:
    """An ``INSERT ... SELECT`` of one wake-up job per row of ``source`` (a CTE or table).

    Bind parameters: ``:queue`` (text); ``wake_at`` (a timestamptz expression, NULL = now) and
    ``priority`` (an integer expression) default to the parameters ``:wake_at``/``:priority``.
    """
    rid = f"({run_id_expr})::text"
    return f"""
        INSERT INTO procrastinate_jobs
            (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at)
        SELECT CAST(:queue AS varchar), '{TASK_NAME}', CAST({priority} AS integer), {rid}, {rid},
               jsonb_build_object('run_id', {rid}), CAST({wake_at} AS timestamptz)
        FROM {source}
        ON CONFLICT (queueing_lock) WHERE status = 'todo'
        DO UPDATE SET
            scheduled_at = CASE
                WHEN procrastinate_jobs.scheduled_at IS NULL OR EXCLUDED.scheduled_at IS NULL
                THEN NULL
                ELSE LEAST(procrastinate_jobs.scheduled_at, EXCLUDED.scheduled_at)
            END,
            priority = GREATEST(procrastinate_jobs.priority, EXCLUDED.priority),
            -- procrastinate NOTIFYs on INSERT only: a merge that makes the job due now must
            -- wake the workers itself (delivered at commit, like the insert trigger's).
            args = CASE
                WHEN EXCLUDED.scheduled_at IS NULL OR EXCLUDED.scheduled_at <= now()
                THEN (SELECT procrastinate_jobs.args FROM pg_notify(
                        'procrastinate_queue_v1#' || procrastinate_jobs.queue_name,
                        json_build_object('type', 'job_inserted',
                                          'job_id', procrastinate_jobs.id)::text))
                ELSE procrastinate_jobs.args
            END
        RETURNING id"""
