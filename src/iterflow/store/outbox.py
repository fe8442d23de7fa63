"""Wake-up jobs in procrastinate's queue, written with plain SQL inside our own transactions.

The job for a run has ``lock = run_id`` (one attempt per run at a time) and
``queueing_lock = run_id`` (one queued wake-up per run). A second wake-up for the same run merges
into the queued one and keeps the **earliest** due time; it never aborts the transaction. A merge
that makes the job due now sends procrastinate's ``job_inserted`` notification itself (its trigger
only fires on INSERT), so e.g. a signal is picked up at once rather than at the next poll. The
engine owns retries and timers, so procrastinate's own retry is never used for this task.

The only module that spells procrastinate's tables: every other statement that touches the
queue (the store's statements, the migrations' install step, the schema filters) builds it from
the fragments here.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "DROP_DUE_INDEX_SQL",
    "DROP_DUE_ORDER_INDEX_SQL",
    "DUE_INDEX_SQL",
    "DUE_ORDER_INDEX_SQL",
    "FETCH_ANY_JOB_SQL",
    "FETCH_CANDIDATES",
    "FETCH_JOB_SQL",
    "INSTALLED_SQL",
    "JOB_INDEXES_SQL",
    "LOCK_INDEX_SQL",
    "NOTIFY_ALWAYS_SQL",
    "NOTIFY_DUE_ONLY_SQL",
    "NOW_INDEX_SQL",
    "PENDING_WAKE_SQL",
    "QUEUE_DUE_INDEX_SQL",
    "SUPERSEDED_INDEXES_SQL",
    "TABLE_PREFIX",
    "TASK_NAME",
    "claimed_wake_insert_sql",
    "drop_queued_wakes_sql",
    "end_own_wake_sql",
    "flow_queue",
    "has_live_job_sql",
    "orphaned_jobs_sql",
    "reconcile_task_name",
    "release_doing_sql",
    "reschedule_wake_sql",
    "retention_task_name",
    "schedule_task_name",
    "wake_insert_sql",
]

#: Every procrastinate table, type and function name starts with this (iterflow's migrations and
#: schema comparisons leave them to procrastinate).
TABLE_PREFIX = "procrastinate_"
#: Non-NULL when procrastinate's schema is installed in the connection's search path.
INSTALLED_SQL = "SELECT to_regclass('procrastinate_jobs')"
#: The fetch query filters todo/doing jobs by lock; this keeps it fast on big tables.
LOCK_INDEX_SQL = (
    "CREATE INDEX IF NOT EXISTS procrastinate_jobs_lock_priority_idx "
    "ON procrastinate_jobs (lock, priority, id) WHERE status IN ('todo', 'doing')"
)
#: Revision 0010's index of the queued jobs by due time, for procrastinate's own fetch (which
#: the planner did not always use); :data:`DUE_ORDER_INDEX_SQL` supersedes it and revision 0011
#: drops it (:data:`DROP_DUE_INDEX_SQL`).
DUE_INDEX_SQL = (
    "CREATE INDEX IF NOT EXISTS procrastinate_jobs_todo_scheduled_idx "
    "ON procrastinate_jobs (scheduled_at) WHERE status = 'todo'"
)
DROP_DUE_INDEX_SQL = "DROP INDEX IF EXISTS procrastinate_jobs_todo_scheduled_idx"
#: The queued jobs due at once (``scheduled_at`` NULL) of each queue, in fetch order (priority
#: DESC spelled ``-(priority::bigint)``, an order procrastinate's priority index cannot give, so
#: that the planner never walks that one through other queues' jobs instead): a queue's first
#: is one index probe however many jobs sleepers or other queues hold.
NOW_INDEX_SQL = (
    "CREATE INDEX IF NOT EXISTS procrastinate_jobs_todo_now_idx "
    "ON procrastinate_jobs (queue_name, (-(priority::bigint)), id) "
    "WHERE status = 'todo' AND scheduled_at IS NULL"
)
#: Revision 0011's index of the queued jobs with a due time, earliest due first within a
#: priority, across queues; :data:`QUEUE_DUE_INDEX_SQL` supersedes it and revision 0012 drops it
#: (:data:`DROP_DUE_ORDER_INDEX_SQL`): the fetch read past other queues' due jobs in it.
DUE_ORDER_INDEX_SQL = (
    "CREATE INDEX IF NOT EXISTS procrastinate_jobs_todo_due_idx "
    "ON procrastinate_jobs (priority DESC, scheduled_at, id) "
    "WHERE status = 'todo' AND scheduled_at IS NOT NULL"
)
DROP_DUE_ORDER_INDEX_SQL = "DROP INDEX IF EXISTS procrastinate_jobs_todo_due_idx"
#: The queued jobs with a due time of each queue, earliest due first within a priority: the
#: ones due now come before the sleepers' (due later), so a queue's first due one is found
#: without reading past those, or past any other queue's jobs.
QUEUE_DUE_INDEX_SQL = (
    "CREATE INDEX IF NOT EXISTS procrastinate_jobs_todo_queue_due_idx "
    "ON procrastinate_jobs (queue_name, priority DESC, scheduled_at, id) "
    "WHERE status = 'todo' AND scheduled_at IS NOT NULL"
)
#: The indexes iterflow adds to procrastinate's jobs table (installed with it; the fetch's two
#: as of revision 0012).
JOB_INDEXES_SQL = (LOCK_INDEX_SQL, NOW_INDEX_SQL, QUEUE_DUE_INDEX_SQL)
#: Dropping the indexes of earlier revisions that the ones above supersede.
SUPERSEDED_INDEXES_SQL = (DROP_DUE_INDEX_SQL, DROP_DUE_ORDER_INDEX_SQL)
#: Free due jobs the fetch below reads per served queue from each of its indexes (and per
#: priority from the second): the most fetches in flight at once that can all still find one of
#: them unlocked.
FETCH_CANDIDATES = 8


def _lock_free(job: str) -> str:
    """procrastinate's lock rule for the job aliased ``job``: no other job of its lock is
    running (``doing``) or queued ahead of it (a higher priority, or the same and older)."""
    return f"""NOT coalesce((
                SELECT true FROM procrastinate_jobs AS other
                WHERE {job}.lock IS NOT NULL AND other.lock = {job}.lock
                  AND (other.status = 'doing'
                       OR (other.status = 'todo'
                           AND (other.priority > {job}.priority
                                OR (other.priority = {job}.priority AND other.id < {job}.id))))
                LIMIT 1), false)"""


#: The worker's fetch of one due wake-up, with procrastinate's rules and effects (its
#: ``procrastinate_fetch_job_v2``: a due ``todo`` job of the served queues, JSON ``:queues``,
#: that the lock rule lets run, highest priority then oldest, marked ``doing`` for
#: procrastinate worker ``:worker_id``, row-locked with ``SKIP LOCKED``; the same columns
#: returned) and a plan that never reads past the wake-ups queued ahead of time.
#:
#: procrastinate's query walks every queued job in ``(priority, id)`` order and filters. With
#: sleeping runs' wake-ups queued (lower ids, due later) it read past all of them on each fetch
#: whenever the planner chose that walk, which it does once a share of the queued jobs is due:
#: 100,000 sleepers and 1,000 due jobs cost 17 ms of PostgreSQL CPU per fetch, and an idle
#: poll 4 ms (docs/performance.md section 10, fix 11); it read past the backlog of a queue
#: this worker does not serve the same way. Here the candidates are, for each served queue, its
#: first :data:`FETCH_CANDIDATES` free jobs due at once (:data:`NOW_INDEX_SQL`, in fetch order)
#: and, for each priority that has jobs with a due time in that queue (one probe each), its
#: first free due ones (:data:`QUEUE_DUE_INDEX_SQL`: an index range that ends at now()); they
#: are taken in ``(priority, id)`` order, locking the first that no other fetch holds. The lock
#: rule is checked as the candidates are read, so jobs waiting for running attempts never hide
#: a free one. One difference from procrastinate's, not a change of which jobs may run: among
#: more than :data:`FETCH_CANDIDATES` due jobs of one queue and priority with a due time, the
#: earliest due go first (not the oldest). Every index read is per served queue, so the
#: backlog of a queue this worker does not serve (a flow version no worker runs any more, its
#: sleepers' wake-ups long due) costs it nothing; with revision 0011's index of due jobs across
#: queues, each fetch and idle poll read past all of them (702 pages with 20,000). The JSON
#: list keeps one generic plan per connection (an array's length, known to each custom plan,
#: made PostgreSQL plan every fetch anew: 0.35 ms).
FETCH_JOB_SQL = f"""
    WITH RECURSIVE served AS (
        SELECT ARRAY(SELECT jsonb_array_elements_text(CAST(:queues AS jsonb))) AS queues
    ), levels(queue, priority) AS (
        -- per served queue, the priorities of its jobs with a due time, highest first, one
        -- probe of its due-time index each; within one, the due jobs are an index range
        SELECT q.name, (SELECT l.priority FROM procrastinate_jobs AS l
                        WHERE l.queue_name = q.name AND l.status = 'todo'
                          AND l.scheduled_at IS NOT NULL
                        ORDER BY l.priority DESC, l.scheduled_at LIMIT 1)
        FROM served CROSS JOIN LATERAL unnest(served.queues) AS q(name)
        UNION ALL
        SELECT v.queue, (SELECT l.priority FROM procrastinate_jobs AS l
                         WHERE l.queue_name = v.queue AND l.status = 'todo'
                           AND l.scheduled_at IS NOT NULL AND l.priority < v.priority
                         ORDER BY l.priority DESC, l.scheduled_at LIMIT 1)
        FROM levels AS v WHERE v.priority IS NOT NULL
    ), candidate AS (
        SELECT j.id
        FROM (
            SELECT c.id, c.priority
            FROM (
                SELECT n.id, n.priority
                FROM served CROSS JOIN LATERAL unnest(served.queues) AS q(name)
                CROSS JOIN LATERAL (
                    SELECT n.id, n.priority FROM procrastinate_jobs AS n
                    WHERE n.queue_name = q.name AND n.status = 'todo'
                      AND n.scheduled_at IS NULL AND {_lock_free("n")}
                    -- priority DESC spelled as the index's expression, an order that
                    -- procrastinate's priority index cannot give: otherwise the planner may
                    -- walk that one, through every other queue's jobs
                    ORDER BY -(n.priority::bigint), n.id
                    LIMIT {FETCH_CANDIDATES}) AS n
                UNION ALL
                SELECT d.id, d.priority
                FROM levels AS v
                CROSS JOIN LATERAL (
                    SELECT d.id, d.priority FROM procrastinate_jobs AS d
                    WHERE d.queue_name = v.queue AND d.priority = v.priority
                      AND d.status = 'todo' AND d.scheduled_at IS NOT NULL
                      AND d.scheduled_at <= now() AND {_lock_free("d")}
                    ORDER BY d.scheduled_at, d.id LIMIT {FETCH_CANDIDATES}) AS d
                WHERE v.priority IS NOT NULL
            ) AS c
            ORDER BY c.priority DESC, c.id
            OFFSET 0
        ) AS first
        JOIN procrastinate_jobs AS j ON j.id = first.id
        WHERE j.status = 'todo'
          AND {_lock_free("j")}
        ORDER BY first.priority DESC, first.id
        LIMIT 1
        FOR UPDATE OF j SKIP LOCKED
    )
    UPDATE procrastinate_jobs AS job SET status = 'doing', worker_id = CAST(:worker_id AS bigint)
    FROM candidate WHERE job.id = candidate.id
    RETURNING job.id, job.status, job.task_name, job.priority, job.lock, job.queueing_lock,
        job.args, job.scheduled_at, job.queue_name, job.attempts, job.worker_id"""
#: procrastinate's own fetch, for a worker on every queue (``queues`` None).
FETCH_ANY_JOB_SQL = (
    "SELECT id, status, task_name, priority, lock, queueing_lock, args, scheduled_at, "
    "queue_name, attempts, worker_id "
    "FROM procrastinate_fetch_job_v2(NULL, CAST(:worker_id AS bigint))"
)


def _notify_inserted_sql(due_only: bool) -> str:
    """procrastinate's function behind its insert trigger, which NOTIFYs the workers of a new
    ``todo`` job's queue (and the any-queue channel); with ``due_only``, only for a job due now
    (no due time, or one already passed)."""
    skip = (
        """
    -- iterflow (revision 0013): a job due later (a sleep's wake-up, a delayed start) wakes no
    -- worker: each would fetch, find nothing due and wait again; the workers' polls take it
    -- once it is due, as they did before
    IF NEW.scheduled_at IS NOT NULL AND NEW.scheduled_at > now() THEN
        RETURN NEW;
    END IF;"""
        if due_only
        else ""
    )
    return f"""
CREATE OR REPLACE FUNCTION procrastinate_notify_queue_job_inserted_v1()
    RETURNS trigger
    LANGUAGE plpgsql
AS $$
DECLARE
    payload TEXT;
BEGIN{skip}
    SELECT json_build_object('type', 'job_inserted', 'job_id', NEW.id)::text INTO payload;
    PERFORM pg_notify('procrastinate_queue_v1#' || NEW.queue_name, payload);
    PERFORM pg_notify('procrastinate_any_queue_v1', payload);
    RETURN NEW;
END;
$$"""


#: procrastinate's NOTIFY of an inserted job, for jobs due now only (revision 0013). procrastinate
#: NOTIFYs every ``todo`` job it inserts, due now or not; each worker of the queue then runs a
#: fetch that finds nothing due, so every sleep's wake-up cost PostgreSQL about 70 µs of CPU
#: per listening worker (docs/performance.md, fix 13). A job due later is fetched by the
#: workers' polls once due (``Settings.worker_poll_interval``), as before: its NOTIFY, sent at
#: its insert, never made it fetched earlier.
NOTIFY_DUE_ONLY_SQL = _notify_inserted_sql(due_only=True)
#: procrastinate 3.10.0's own body of that function (revision 0013's downgrade).
NOTIFY_ALWAYS_SQL = _notify_inserted_sql(due_only=False)
#: The queued (``todo``) wake-up of a run: bind ``:lock`` (the run id as text).
PENDING_WAKE_SQL = (
    "SELECT scheduled_at, priority FROM procrastinate_jobs "
    "WHERE queueing_lock = :lock AND status = 'todo'"
)

#: The procrastinate task every wake-up job runs.
TASK_NAME = "iterflow.advance"
#: procrastinate NOTIFYs and LISTENs on ``procrastinate_queue_v1#<queue>``; PostgreSQL channel
#: names stop at 63 bytes, so a queue name is at most this long.
MAX_QUEUE_BYTES = 63 - len("procrastinate_queue_v1#")


def flow_queue(base: str, name: str, version: int) -> str:
    """The procrastinate queue of the wake-ups of ``name@version`` (``base`` is the engine's
    queue, ``Settings.queue_name``): ``<base>/<name>@<version>``, or a digest of it when that is
    too long for a channel name. One queue per flow version: a worker listens only to the queues
    of the flow versions it serves, so it never fetches another's runs."""
    plain = f"{base}/{name}@{version}"
    if len(plain.encode()) <= MAX_QUEUE_BYTES:
        return plain
    return "iterflow/" + hashlib.sha256(plain.encode()).hexdigest()[:24]


def reconcile_task_name(schema: str) -> str:
    """The procrastinate task of the periodic reconciler for the tables in ``schema``."""
    return f"iterflow.reconcile.{schema}"


def schedule_task_name(schema: str) -> str:
    """The procrastinate task of the periodic schedule sweep for the tables in ``schema``."""
    return f"iterflow.schedule.{schema}"


def retention_task_name(schema: str) -> str:
    """The procrastinate task of the periodic retention sweep for the tables in ``schema``."""
    return f"iterflow.retention.{schema}"


def _notify_job_inserted(job: str) -> str:
    """The ``job_inserted`` NOTIFY procrastinate's insert trigger sends for a job due now, for
    the job aliased ``job``, on its queue's channel: a worker of that queue fetches it."""
    return (
        f"pg_notify('procrastinate_queue_v1#' || {job}.queue_name, "
        f"json_build_object('type', 'job_inserted', 'job_id', {job}.id)::text)"
    )


def wake_insert_sql(
    source: str,
    run_id_expr: str = "id",
    *,
    wake_at: str = ":wake_at",
    priority: str = ":priority",
    queue: str = "NULL",
) -> str:
    """An ``INSERT ... SELECT`` of one wake-up job per row of ``source`` (a CTE or table).

    Bind parameters: ``:queue`` (text, the engine's base queue); ``wake_at`` (a timestamptz
    expression, NULL = now) and ``priority`` (an integer expression) default to the parameters
    ``:wake_at``/``:priority``; ``queue`` is the run's own queue (``runs.queue``, see
    :func:`flow_queue`), the base queue when NULL.
    """
    rid = f"({run_id_expr})::text"
    return f"""
        INSERT INTO procrastinate_jobs
            (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at)
        SELECT CAST(coalesce({queue}, :queue) AS varchar), '{TASK_NAME}',
               CAST({priority} AS integer), {rid}, {rid},
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
                THEN (SELECT procrastinate_jobs.args
                      FROM {_notify_job_inserted("procrastinate_jobs")})
                ELSE procrastinate_jobs.args
            END
        RETURNING id"""


def release_doing_sql(source: str) -> str:
    """Delete the wake-up left ``doing`` for each run id of ``source`` (a CTE with an ``id``
    column): it holds the run's job lock, and the run is woken anew by the same statement. A
    released job is deleted, not left ``failed`` (procrastinate keeps failed jobs for good): a
    crash or a deploy leaves no row behind (``procrastinate_events`` rows go with it, by
    procrastinate's cascade). ``RETURNING 1`` per job released."""
    return f"""
        DELETE FROM procrastinate_jobs
        WHERE status = 'doing' AND lock IN (SELECT id::text FROM {source})
        RETURNING 1"""


def end_own_wake_sql(source: str) -> str:
    """Delete the wake-up job ``:job_id`` the attempt is running (procrastinate's ``doing``
    row, or the one a start claimed at once holds: :func:`claimed_wake_insert_sql`; NULL for
    none) when ``source`` has a row: the attempt's last write ends its job in the same
    transaction, so the job and the run never disagree and procrastinate's own ``finish_job``
    is skipped (``runtime/host.py``). A job the reconciler released meanwhile (the run had lost
    its lease, e.g. canceled during the attempt) is gone already; one that an older reconciler
    marked ``failed`` instead (earlier iterflow, during a rolling deploy) is deleted the same
    way.

    The run's next wake-up, queued while the attempt ran (a signal, a child's end), could not
    be fetched until now (the job lock) and its insert's NOTIFY has passed: when it is due, the
    same commit sends procrastinate's ``job_inserted`` for it, so a worker fetches it at once
    rather than at its next poll. ``RETURNING`` those notifications (0 or 1) per job ended."""
    return f"""
        DELETE FROM procrastinate_jobs AS own
        WHERE own.id = CAST(:job_id AS bigint) AND own.status IN ('doing', 'failed')
          AND EXISTS (SELECT 1 FROM {source})
        RETURNING (
            SELECT count({_notify_job_inserted("j")})
            FROM procrastinate_jobs AS j
            WHERE j.queueing_lock = own.lock AND j.status = 'todo'
              AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())) AS notified"""


def claimed_wake_insert_sql(source: str) -> str:
    """The ``doing`` wake-up job of each run of ``source`` (a CTE with ``id``, ``priority`` and
    ``queue`` columns) written already claimed by a start (``Store.start_claimed``): it holds
    the run's job lock, as the job a worker fetched does, so a wake-up queued while the attempt
    runs (a signal, a child's end) waits for the attempt's end instead of being fetched, refused
    by the claim and lost. The attempt's last write deletes it (:func:`end_own_wake_sql`); a
    dead process's is released with its run's expired lease. Bind ``:queue`` (the base queue).
    ``RETURNING id``."""
    rid = "(id)::text"
    return f"""
        INSERT INTO procrastinate_jobs (queue_name, task_name, priority, lock, args, status)
        SELECT CAST(coalesce(queue, :queue) AS varchar), '{TASK_NAME}', priority, {rid},
               jsonb_build_object('run_id', {rid}), 'doing'
        FROM {source}
        RETURNING id"""


def drop_queued_wakes_sql(source: str) -> str:
    """Delete the queued wake-up of each run id of ``source`` (a CTE with an ``id`` column).
    ``RETURNING 1`` per job deleted."""
    return f"""
        DELETE FROM procrastinate_jobs
        WHERE status = 'todo' AND queueing_lock IN (SELECT id::text FROM {source})
        RETURNING 1"""


def reschedule_wake_sql(source: str) -> str:
    """Move the queued wake-up of each row of ``source`` (a CTE with ``id`` and ``wake_at``
    columns) to its ``wake_at``, later or earlier (a debounced run's quiet period restarting).
    ``RETURNING 1`` per job moved."""
    return f"""
        UPDATE procrastinate_jobs AS j SET scheduled_at = {source}.wake_at
        FROM {source}
        WHERE j.status = 'todo' AND j.queueing_lock = {source}.id::text
        RETURNING 1"""


def has_live_job_sql(run_id_expr: str) -> str:
    """True when the run ``run_id_expr`` has a wake-up queued or running."""
    return (
        "EXISTS (SELECT 1 FROM procrastinate_jobs AS j "
        f"WHERE j.lock = ({run_id_expr})::text AND j.status IN ('todo', 'doing'))"
    )


def orphaned_jobs_sql(run_is_ours: str, run_is_leased: str) -> str:
    """Delete this engine's jobs left ``doing`` by a dead worker (as :func:`release_doing_sql`:
    no ``failed`` row is left behind).

    A wake-up (task ``:task``, in the queue of its flow version or the base queue ``:queue``) of
    one of this engine's runs (``run_is_ours``, an SQL condition on ``j.lock``, the run id as
    text) left ``doing`` holds its run's job lock, so the run's next wake-up can never be
    fetched. It is orphaned when no lease owns its run (``run_is_leased``, a condition on
    ``j.lock`` as well, is false) and either its worker stopped
    heartbeating, or it has been ``doing`` longer than the stale window (``:stale`` seconds): a
    live worker whose ``finish_job`` was lost. A periodic task (``:reconcile_task``,
    ``:schedule_task`` or ``:retention_task``, in the base queue) left ``doing`` by a killed
    worker holds no lock, but nothing else would ever end it: the same rule, without the lease,
    releases it. Returns one row, ``released``.
    """
    return f"""
        WITH released AS (
        DELETE FROM procrastinate_jobs AS j
        WHERE j.status = 'doing'
          AND ((j.queue_name = :queue
                AND j.task_name IN (:reconcile_task, :schedule_task, :retention_task))
               OR (j.task_name = :task AND ({run_is_ours}) AND NOT ({run_is_leased})))
          AND (j.worker_id IS NULL
               OR j.worker_id IN (
                    SELECT id FROM procrastinate_workers
                    WHERE last_heartbeat < now() - make_interval(secs => :stale))
               OR NOT EXISTS (
                    SELECT 1 FROM procrastinate_events AS e
                    WHERE e.job_id = j.id AND e.type = 'started'
                      AND e.at >= now() - make_interval(secs => :stale)))
        RETURNING 1
        )
        SELECT count(*) AS released FROM released"""
