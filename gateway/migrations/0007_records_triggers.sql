-- Invocation records for every trigger, with their cold-start tier and where time went.
ALTER TABLE invocation_records
    ADD COLUMN trigger text NOT NULL DEFAULT 'http',
    -- paused | prewarm | new; NULL when warm.
    ADD COLUMN tier text,
    -- Time queued for a slot, and the part of it spent starting a cold instance.
    ADD COLUMN wait_ms double precision NOT NULL DEFAULT 0,
    ADD COLUMN init_ms double precision NOT NULL DEFAULT 0,
    -- The async invocation (queue row) an attempt belongs to.
    ADD COLUMN parent uuid;
UPDATE invocation_records SET tier = 'new' WHERE cold;
ALTER TABLE invocation_records DROP COLUMN cold;
ALTER TABLE invocation_records ALTER COLUMN trigger DROP DEFAULT;
CREATE INDEX invocation_records_parent ON invocation_records (parent) WHERE parent IS NOT NULL;

-- What made a queued invocation: async | webhook | job | schedule.
ALTER TABLE invocations ADD COLUMN trigger text NOT NULL DEFAULT 'async';
UPDATE invocations SET trigger = 'job' WHERE job_id IS NOT NULL;
