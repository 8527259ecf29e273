-- Batch jobs. Items are rows of `invocations` with job_id and item_index.

-- name: insert
INSERT INTO jobs (id, function, total, max_concurrency, max_retries) VALUES ($1, $2, $3, $4, $5)
RETURNING created_at

-- name: notify
SELECT pg_notify('kapal_queue', $1)

-- name: get
SELECT id, function, total, max_concurrency, max_retries, created_at, cancelled_at
FROM jobs WHERE id = $1

-- name: counts
SELECT status, count(*) AS n, min(started_at) AS first_start, max(finished_at) AS last_finish
FROM invocations WHERE job_id = $1 GROUP BY status

-- name: results
SELECT item_index, status, result_status, result_body, error
FROM invocations WHERE job_id = $1 ORDER BY item_index

-- name: cancel
WITH job AS (
    UPDATE jobs SET cancelled_at = COALESCE(cancelled_at, now()) WHERE id = $1 RETURNING id)
UPDATE invocations SET status = 'cancelled', finished_at = now()
WHERE job_id = (SELECT id FROM job) AND status = 'queued'
RETURNING id

-- name: list
SELECT id, function, total, max_concurrency, max_retries, created_at, cancelled_at
FROM jobs WHERE ($1::text IS NULL OR function = $1) ORDER BY created_at DESC, id LIMIT $2

-- name: counts_many
SELECT job_id, status, count(*) AS n, min(started_at) AS first_start, max(finished_at) AS last_finish
FROM invocations WHERE job_id = ANY($1::uuid[]) GROUP BY job_id, status
