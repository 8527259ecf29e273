"""Decides what runs where: per-function pools of container instances.

Knows nothing of HTTP routes or Postgres; the gateway hands it `FunctionSpec`s.
"""
