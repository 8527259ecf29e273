"""Batch jobs: many items, one queued invocation each, tracked and cancellable."""
