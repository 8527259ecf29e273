"""The function-log services of one gateway: the writer, the collector, the feed."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from gateway.logs.collector import LogCollector
from gateway.logs.engine import EngineLogs
from gateway.logs.feed import LogFeed
from gateway.logs.writer import LogWriter
from gateway.metrics import Metrics
from gateway.settings import Settings
from scheduler.pool import Instance
from scheduler.scheduler import Scheduler


@dataclass(frozen=True)
class Logs:
    writer: LogWriter
    collector: LogCollector
    feed: LogFeed

    @classmethod
    def build(
        cls,
        settings: Settings,
        pg: asyncpg.Pool,
        scheduler: Scheduler,
        metrics: Metrics,
        engine_logs: EngineLogs | None = None,
    ) -> Logs:
        """Wired to the scheduler, whose instance events go into each function's log, and
        to the metrics, which count the lines dropped (by the caps, or refused); image
        functions' lines are read from `engine_logs`."""

        def dropped(function: str, reason: str, lines: int) -> None:
            metrics.log_lines_dropped[(function, reason)] += lines

        writer = LogWriter(
            pg,
            settings.logs_flush_s,
            settings.logs_retention_days,
            refused=lambda function, lines: dropped(function, "refused", lines),
        )

        def event(inst: Instance, level: str, what: str) -> None:
            writer.event(inst.spec.name, inst.version, inst.id, what, level)

        scheduler.events = event
        return cls(
            writer,
            LogCollector(
                scheduler,
                writer,
                pg,
                settings.log_rate_lines_s,
                dropped,
                engine_logs=engine_logs,
            ),
            LogFeed(settings.database_url),
        )
