-- The durable queue: async invocations, webhook deliveries, job items, scheduled ticks.
CREATE TABLE jobs (
    id              uuid PRIMARY KEY,
    function        text NOT NULL,
    total           integer NOT NULL,
    max_concurrency integer,
    max_retries     integer NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    cancelled_at    timestamptz
);

CREATE TABLE invocations (
    id               uuid PRIMARY KEY,
    -- Claim order among rows ready at the same time (job items keep their index order).
    seq              bigserial,
    function         text NOT NULL,
    method           text NOT NULL,
    path             text NOT NULL,
    headers          jsonb NOT NULL,
    body             bytea NOT NULL,
    -- queued | running | succeeded | failed | dead | cancelled
    status           text NOT NULL DEFAULT 'queued',
    attempts         integer NOT NULL DEFAULT 0,
    max_retries      integer NOT NULL,
    idempotency_key  text,
    callback_url     text,
    job_id           uuid REFERENCES jobs (id) ON DELETE CASCADE,
    item_index       integer,
    run_at           timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    last_attempt_at  timestamptz,
    finished_at      timestamptz,
    -- The claiming worker and how long its claim holds without a heartbeat.
    worker           text,
    lease_until      timestamptz,
    result_status    integer,
    result_headers   jsonb,
    result_body      bytea,
    error            text,
    -- NULL (no callback) | pending | delivered | failed
    callback_state   text,
    callback_attempts integer NOT NULL DEFAULT 0,
    callback_at      timestamptz
);
CREATE UNIQUE INDEX invocations_idempotency ON invocations (function, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- A lane is a function's own queue, or one job's items: claimed with a range scan each.
CREATE INDEX invocations_ready ON invocations
    (function, (COALESCE(job_id, '00000000-0000-0000-0000-000000000000'::uuid)), run_at, seq)
    WHERE status = 'queued';
CREATE INDEX invocations_leased ON invocations (lease_until) WHERE status = 'running';
-- Counting what runs per function and job, across gateways, for their concurrency limits.
CREATE INDEX invocations_running ON invocations (function, job_id) WHERE status = 'running';
CREATE INDEX invocations_job ON invocations (job_id, item_index) WHERE job_id IS NOT NULL;
CREATE INDEX invocations_dead_letters ON invocations (created_at)
    WHERE status IN ('dead', 'failed');
CREATE INDEX invocations_callbacks ON invocations (callback_at)
    WHERE callback_state = 'pending';

CREATE TABLE webhooks (
    id          text PRIMARY KEY,
    function    text NOT NULL,
    verify      text NOT NULL,
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    rotated_at  timestamptz
);

CREATE TABLE schedules (
    id          uuid PRIMARY KEY,
    function    text NOT NULL,
    cron        text NOT NULL,
    timezone    text NOT NULL,
    payload     jsonb NOT NULL,
    next_run    timestamptz NOT NULL,
    last_run    timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_next_run ON schedules (next_run);
