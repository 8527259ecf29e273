-- Secrets, AES-GCM sealed by the gateway (nonce || ciphertext); values never in clear here.
CREATE TABLE secrets (
    name       text PRIMARY KEY,
    sealed     bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
