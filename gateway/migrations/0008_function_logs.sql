-- Every line a function wrote (pulled from its instances' runtimes) and what the platform
-- did to its instances, kept for the retention period.
CREATE TABLE function_logs (
    function    text NOT NULL,
    version     integer NOT NULL,
    -- The instance that wrote it ('' for an event of no instance, such as a build).
    instance    text NOT NULL,
    -- The line's number in its instance's runtime (0 for platform events).
    seq         bigint NOT NULL,
    ts          timestamptz NOT NULL,
    -- stdout | stderr | log (Python logging) | runtime (the runtime's own) | platform
    stream      text NOT NULL,
    level       text,
    request_id  text,
    line        text NOT NULL,
    -- The write (one per gateway flush) that stored it: followers read what came after.
    batch       bigint NOT NULL
);
CREATE SEQUENCE function_logs_batch;
CREATE INDEX function_logs_function_ts ON function_logs (function, ts);
CREATE INDEX function_logs_function_batch ON function_logs (function, batch);
CREATE INDEX function_logs_request ON function_logs (request_id) WHERE request_id IS NOT NULL;
-- Retention deletes by time alone: a block range index costs next to nothing to keep.
CREATE INDEX function_logs_ts ON function_logs USING brin (ts);

-- How far each instance's lines are stored: a gateway that takes over collecting asks
-- the runtime for what follows, so nothing is stored twice.
CREATE TABLE log_cursors (
    instance    text PRIMARY KEY,
    seq         bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
