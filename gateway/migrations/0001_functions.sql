-- Functions, their immutable versions (with the code that built them), invocation records.
CREATE TABLE functions (
    name            text PRIMARY KEY,
    current_version integer NOT NULL,
    invocations     bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE function_versions (
    name        text NOT NULL REFERENCES functions (name) ON DELETE CASCADE,
    version     integer NOT NULL,
    spec        jsonb NOT NULL,
    image       text NOT NULL,
    code        bytea NOT NULL,
    code_sha256 text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TABLE invocation_records (
    id          uuid PRIMARY KEY,
    function    text NOT NULL,
    version     integer NOT NULL,
    method      text NOT NULL,
    path        text NOT NULL,
    status      integer NOT NULL,
    cold        boolean NOT NULL,
    instance    text NOT NULL,
    started_at  timestamptz NOT NULL,
    duration_ms double precision NOT NULL
);
CREATE INDEX invocation_records_function_started ON invocation_records (function, started_at);
CREATE INDEX invocation_records_started ON invocation_records (started_at);
