-- Webhook endpoints. The secret is sealed here (see migration 0006) and only ever
-- returned in clear at creation and rotation.

-- name: insert
INSERT INTO webhooks (id, function, verify, sealed) VALUES ($1, $2, $3, $4)
RETURNING id, function, verify, created_at, rotated_at

-- name: get
-- `secret`: a row still in clear, written before sealing (by a gateway of an older version).
SELECT id, function, verify, sealed, secret, created_at, rotated_at FROM webhooks WHERE id = $1

-- name: list
SELECT id, function, verify, created_at, rotated_at FROM webhooks ORDER BY created_at, id

-- name: rotate
UPDATE webhooks SET sealed = $2, secret = NULL, rotated_at = now() WHERE id = $1
RETURNING id, function, verify, created_at, rotated_at

-- name: delete
DELETE FROM webhooks WHERE id = $1 RETURNING id

-- name: in_clear
-- Rows whose secret is not sealed yet.
SELECT id, secret FROM webhooks WHERE secret IS NOT NULL

-- name: seal
-- Only while the row still holds the same secret in clear (another gateway may be here too).
UPDATE webhooks SET sealed = $3, secret = NULL WHERE id = $1 AND secret = $2
