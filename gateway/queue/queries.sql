-- The durable queue's queries. One row of `invocations` per accepted invocation.

-- name: enqueue
-- A group commit: many accepted requests in one statement (one round trip, one commit);
-- repeated idempotency keys are skipped; workers are notified when rows went in.
WITH inserted AS (
    INSERT INTO invocations
        (id, function, method, path, headers, body, max_retries, idempotency_key, callback_url,
         trigger)
    SELECT * FROM unnest(
        $1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::bytea[], $7::int[],
        $8::text[], $9::text[], $11::text[])
    ON CONFLICT (function, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id
), notified AS (
    SELECT pg_notify('kapal_queue', $10) WHERE EXISTS (SELECT 1 FROM inserted)
)
SELECT id FROM inserted LEFT JOIN notified ON true

-- name: existing_ids
SELECT i.function, i.idempotency_key, i.id FROM invocations i
JOIN unnest($1::text[], $2::text[]) AS k(function, key)
    ON i.function = k.function AND i.idempotency_key = k.key

-- name: notify
-- The payload names the lanes ("function" or "function/job-id") with new work; "*" is many.
SELECT pg_notify('kapal_queue', $1)

-- name: claim_lock
-- Claims of one function wait for each other, on every gateway: the claim that follows
-- (a new statement, so a new snapshot) counts the rows the one before it marked running.
SELECT pg_advisory_xact_lock(hashtext('kapal-claim:' || $1))

-- name: claim
-- One lane's oldest ready rows, skipping rows other workers hold, marked running at once.
-- $1 function, $2 job (or the nil uuid), $3 most rows, $4 worker, $5 lease seconds,
-- $6 the function's concurrency, $7 the job's (NULL: none).
UPDATE invocations SET
    status = 'running',
    attempts = attempts + 1,
    worker = $4,
    lease_until = now() + make_interval(secs => $5),
    started_at = COALESCE(started_at, now()),
    last_attempt_at = now()
WHERE id IN (
    SELECT id FROM invocations
    WHERE status = 'queued' AND function = $1
        AND COALESCE(job_id, '00000000-0000-0000-0000-000000000000'::uuid) = $2
        AND run_at <= now()
    ORDER BY run_at, seq
    -- The function's and the job's limits hold across gateways: what runs anywhere counts.
    LIMIT LEAST(
        $3,
        GREATEST(0, $6 - (
            SELECT count(*) FROM invocations WHERE status = 'running' AND function = $1)),
        CASE WHEN $7::int IS NULL THEN $3 ELSE GREATEST(0, $7 - (
            SELECT count(*) FROM invocations
            WHERE status = 'running' AND function = $1 AND job_id = $2)) END)
    FOR UPDATE SKIP LOCKED)
RETURNING id, function, method, path, headers, body, attempts, max_retries, job_id, trigger

-- name: finish
-- Results of attempts, as one statement; only the current claim (worker, attempt) counts.
UPDATE invocations i SET
    status = f.status,
    run_at = COALESCE(f.run_at, i.run_at),
    finished_at = CASE WHEN f.status = 'queued' THEN NULL ELSE now() END,
    worker = NULL,
    lease_until = NULL,
    result_status = f.result_status,
    result_headers = f.result_headers,
    result_body = f.result_body,
    error = f.error,
    callback_state = CASE WHEN f.status <> 'queued' AND i.callback_url IS NOT NULL
        THEN 'pending' ELSE i.callback_state END,
    callback_at = now()
FROM unnest(
    $1::uuid[], $2::int[], $3::text[], $4::timestamptz[], $5::int[], $6::jsonb[],
    $7::bytea[], $8::text[]
) AS f(id, attempts, status, run_at, result_status, result_headers, result_body, error)
WHERE i.id = f.id AND i.status = 'running' AND i.attempts = f.attempts AND i.worker = $9
RETURNING i.id

-- name: job_limits
SELECT id, max_concurrency FROM jobs WHERE id = ANY($1::uuid[])

-- name: heartbeat
UPDATE invocations SET lease_until = now() + make_interval(secs => $2)
WHERE status = 'running' AND worker = $1

-- name: recover_expired
-- Rows whose worker vanished (crash, kill -9): run again, or dead when out of retries.
UPDATE invocations SET
    status = CASE WHEN attempts > max_retries THEN 'dead' ELSE 'queued' END,
    run_at = now(),
    worker = NULL,
    lease_until = NULL,
    error = 'lease expired: the worker running it was lost',
    finished_at = CASE WHEN attempts > max_retries THEN now() END,
    callback_state = CASE WHEN attempts > max_retries AND callback_url IS NOT NULL
        THEN 'pending' ELSE callback_state END,
    callback_at = now()
WHERE status = 'running' AND lease_until < now()
RETURNING id, function, status

-- name: release_own
-- A clean shutdown hands its unfinished rows back; the interrupted attempt does not count.
UPDATE invocations SET
    status = 'queued', attempts = GREATEST(attempts - 1, 0), worker = NULL,
    lease_until = NULL, run_at = now()
WHERE status = 'running' AND worker = $1

-- name: depth
-- Queued rows per lane, with the job's concurrency limit.
SELECT i.function, i.job_id, j.max_concurrency AS job_concurrency, count(*) AS n
FROM invocations i LEFT JOIN jobs j ON j.id = i.job_id
WHERE i.status = 'queued'
GROUP BY i.function, i.job_id, j.max_concurrency

-- name: get
SELECT id, function, method, path, status, attempts, max_retries, idempotency_key,
    callback_url, job_id, item_index, run_at, created_at, started_at, last_attempt_at,
    finished_at, result_status, result_headers, result_body, error, callback_state,
    callback_attempts
FROM invocations WHERE id = $1

-- name: list
SELECT id, function, method, path, status, attempts, max_retries, idempotency_key,
    callback_url, job_id, item_index, run_at, created_at, started_at, last_attempt_at,
    finished_at, result_status, result_headers, result_body, error, callback_state,
    callback_attempts
FROM invocations
WHERE ($1::text IS NULL OR function = $1) AND ($2::text IS NULL OR status = $2)
ORDER BY created_at DESC, id
LIMIT $3

-- name: retain
-- Finished invocations outside jobs, past retention; dead letters stay until re-driven.
DELETE FROM invocations WHERE id IN (
    SELECT id FROM invocations
    WHERE job_id IS NULL AND status IN ('succeeded', 'failed', 'cancelled')
        AND finished_at < now() - make_interval(days => $1)
        AND (callback_state IS NULL OR callback_state <> 'pending')
    LIMIT 10000)

-- name: retain_jobs
-- Whole jobs past retention once nothing of them is left to run (items go with them).
DELETE FROM jobs j
WHERE j.created_at < now() - make_interval(days => $1)
    AND NOT EXISTS (
        SELECT 1 FROM invocations i
        WHERE i.job_id = j.id AND i.status IN ('queued', 'running'))

-- name: redrive
UPDATE invocations SET
    status = 'queued', attempts = 0, run_at = now(), finished_at = NULL, error = NULL,
    callback_state = NULL, callback_attempts = 0
WHERE id = $1 AND status IN ('dead', 'failed')
RETURNING id, function, job_id

-- name: claim_callbacks
-- Callbacks due; claimed by pushing callback_at past the delivery's timeout.
UPDATE invocations SET callback_at = now() + make_interval(secs => $2)
WHERE id IN (
    SELECT id FROM invocations
    WHERE callback_state = 'pending' AND callback_at <= now()
    ORDER BY callback_at LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING id, function, status, attempts, callback_url, callback_attempts, created_at,
    started_at, finished_at, result_status, result_headers, result_body, error, job_id,
    item_index, max_retries, method, path, idempotency_key, run_at, last_attempt_at,
    callback_state

-- name: callback_done
UPDATE invocations SET
    callback_state = $2, callback_attempts = callback_attempts + 1, callback_at = $3
WHERE id = $1

-- name: stats
-- For /metrics, one round trip: queued invocations outside jobs per function, with how
-- long the oldest ready one has waited past its run_at (ready rows only: one waiting for
-- its retry backoff is not late); then the items of unfinished jobs per function and
-- state (finished jobs are left out: their items stay for days and would be rescanned).
SELECT function, NULL::text AS state, count(*) AS n,
    COALESCE(EXTRACT(EPOCH FROM now() - min(run_at) FILTER (WHERE run_at <= now())), 0)::float8
        AS oldest_s
FROM invocations
WHERE status = 'queued' AND job_id IS NULL
GROUP BY function
UNION ALL
SELECT i.function, i.status, count(*), 0::float8
FROM invocations i
WHERE i.job_id IN (
    SELECT job_id FROM invocations
    WHERE status IN ('queued', 'running') AND job_id IS NOT NULL)
GROUP BY i.function, i.status
