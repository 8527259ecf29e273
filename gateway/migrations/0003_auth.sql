-- API keys: only a sha256 of the secret part is kept; the id is the lookup key.
CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    scopes      text[] NOT NULL,
    secret_hash bytea NOT NULL,
    rps         double precision,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_active ON api_keys (id) WHERE revoked_at IS NULL;
