-- Webhook endpoints. The secret is only ever returned at creation and rotation.

-- name: insert
INSERT INTO webhooks (id, function, verify, secret) VALUES ($1, $2, $3, $4)
RETURNING id, function, verify, created_at, rotated_at

-- name: get
SELECT id, function, verify, secret, created_at, rotated_at FROM webhooks WHERE id = $1

-- name: list
SELECT id, function, verify, created_at, rotated_at FROM webhooks ORDER BY created_at, id

-- name: rotate
UPDATE webhooks SET secret = $2, rotated_at = now() WHERE id = $1
RETURNING id, function, verify, created_at, rotated_at

-- name: delete
DELETE FROM webhooks WHERE id = $1 RETURNING id
