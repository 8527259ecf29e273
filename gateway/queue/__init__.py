"""The durable queue: async invocations stored in Postgres, run by workers, retried."""
