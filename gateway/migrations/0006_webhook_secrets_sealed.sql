-- Webhook signing secrets sealed like other secrets (AES-GCM, nonce || ciphertext, bound
-- to 'webhook/<id>'). The key is the gateway's, never the database's, so rows written in
-- clear before this are sealed by the next gateway to start (webhooks.store.seal_plaintext)
-- and their `secret` set to NULL; a row holds one or the other, never both.
ALTER TABLE webhooks ADD COLUMN sealed bytea;
ALTER TABLE webhooks ALTER COLUMN secret DROP NOT NULL;
ALTER TABLE webhooks ADD CONSTRAINT webhooks_secret_sealed_or_clear
    CHECK (secret IS NULL OR sealed IS NULL);
