-- Schedules. A tick enqueues one invocation in the same transaction that moves next_run.

-- name: insert
INSERT INTO schedules (id, function, cron, timezone, payload, next_run)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id, function, cron, timezone, payload, next_run, last_run, created_at

-- name: get
SELECT id, function, cron, timezone, payload, next_run, last_run, created_at
FROM schedules WHERE id = $1

-- name: list
SELECT id, function, cron, timezone, payload, next_run, last_run, created_at
FROM schedules ORDER BY created_at, id

-- name: delete
DELETE FROM schedules WHERE id = $1 RETURNING id

-- name: due
-- Locked for the transaction: of several gateways, one fires each tick.
SELECT id, function, cron, timezone, payload, next_run, now() AS db_now
FROM schedules WHERE next_run <= now()
ORDER BY next_run LIMIT $1
FOR UPDATE SKIP LOCKED

-- name: advance
UPDATE schedules SET next_run = $2, last_run = COALESCE($3, last_run) WHERE id = $1
