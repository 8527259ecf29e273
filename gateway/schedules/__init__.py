"""Schedules: cron expressions that enqueue one async invocation per tick."""
