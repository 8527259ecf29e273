"""Kapal's gateway: management API, invocation routes, and the Postgres it owns."""
