"""Result callbacks (X-Callback-Url): POSTed once an invocation is final, retried durably."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from datetime import UTC, datetime

import aiohttp
import asyncpg

from gateway.queue.models import invocation_out
from gateway.queue.retry import RetryPolicy
from gateway.queue.store import QueueStore
from gateway.settings import Settings

log = logging.getLogger("kapal.gateway.callbacks")

BATCH = 50


class CallbackSender:
    def __init__(self, settings: Settings, store: QueueStore) -> None:
        self.settings = settings
        self.store = store
        self.policy = RetryPolicy(settings.queue_retry_base_s, settings.queue_retry_cap_s)

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.callback_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.queue_poll_s)
                try:
                    while not stop.is_set():
                        rows = await self.store.claim_callbacks(
                            BATCH, self.settings.callback_timeout_s * 2
                        )
                        if not rows:
                            break
                        await asyncio.gather(*(self._deliver(http, r) for r in rows))
                except (OSError, asyncpg.PostgresError) as e:
                    log.warning("callbacks failed", extra={"error": str(e)})

    async def _deliver(self, http: aiohttp.ClientSession, row: asyncpg.Record) -> None:
        out = invocation_out(row)
        headers = {
            "X-Kapal-Invocation-Id": str(out.id),
            "X-Kapal-Status": out.status,
            "Content-Type": "application/json",
        }
        error = ""
        try:
            async with http.post(
                row["callback_url"], data=out.model_dump_json(), headers=headers
            ) as r:
                if r.status < 300:
                    await self.store.callback_done(out.id, "delivered", None)
                    return
                error = f"HTTP {r.status}"
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            error = type(e).__name__
        attempt = row["callback_attempts"] + 1
        if attempt >= self.settings.callback_max_attempts:
            log.warning("callback given up", extra={"invocation": str(out.id), "error": error})
            await self.store.callback_done(out.id, "failed", None)
            return
        delay = self.policy.backoff_s(attempt, random.random())
        next_at = datetime.fromtimestamp(time.time() + delay, UTC)
        log.info(
            "callback failed; will retry",
            extra={"invocation": str(out.id), "error": error, "attempt": attempt},
        )
        await self.store.callback_done(out.id, "pending", next_at)
