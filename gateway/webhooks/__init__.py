"""Webhook endpoints: signed deliveries verified, deduplicated and queued durably."""
