"""The cron parser and next-tick search, on fixed dates."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from gateway.schedules.cron import Cron, CronError

UTCZ = ZoneInfo("UTC")


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def nxt(expr: str, after: datetime, tz: str = "UTC") -> datetime:
    return Cron.parse(expr).next_after(after, ZoneInfo(tz))


def test_fields_lists_ranges_steps_and_names() -> None:
    cron = Cron.parse("*/15 9-17/4 1,15 jan-mar mon-fri")
    assert cron.minutes == {0, 15, 30, 45}
    assert cron.hours == {9, 13, 17}
    assert cron.days == {1, 15}
    assert cron.months == {1, 2, 3}
    assert cron.weekdays == {1, 2, 3, 4, 5}
    assert Cron.parse("0 0 * * 7").weekdays == {0}
    assert Cron.parse("5/20 * * * *").minutes == {5, 25, 45}
    assert Cron.parse("@hourly") == Cron.parse("0 * * * *")


@pytest.mark.parametrize(
    ("expr", "word"),
    [
        ("* * * *", "5 fields"),
        ("60 * * * *", "minute"),
        ("* 24 * * *", "hour"),
        ("* * 0 * *", "day of month"),
        ("* * * 13 *", "month"),
        ("* * * * 8", "day of week"),
        ("*/0 * * * *", "step"),
        ("5-1 * * * *", "backwards"),
        ("x * * * *", "minute"),
        ("0 0 30 2 *", "never"),
    ],
)
def test_bad_expressions_name_the_problem(expr: str, word: str) -> None:
    with pytest.raises(CronError, match=word):
        Cron.parse(expr)


def test_next_tick_is_strictly_after() -> None:
    assert nxt("* * * * *", at(2026, 1, 1, 10, 0, 0)) == at(2026, 1, 1, 10, 1)
    assert nxt("* * * * *", at(2026, 1, 1, 10, 0, 30)) == at(2026, 1, 1, 10, 1)
    assert nxt("30 * * * *", at(2026, 1, 1, 10, 30)) == at(2026, 1, 1, 11, 30)


def test_next_tick_crosses_days_months_and_years() -> None:
    assert nxt("0 0 1 * *", at(2026, 1, 31, 12, 0)) == at(2026, 2, 1)
    assert nxt("0 12 29 2 *", at(2026, 3, 1)) == at(2028, 2, 29, 12, 0)
    assert nxt("59 23 31 12 *", at(2026, 12, 31, 23, 59)) == at(2027, 12, 31, 23, 59)


def test_day_of_month_or_day_of_week_when_both_are_given() -> None:
    # 2026-03-02 is a Monday: "the 15th or any Monday".
    assert nxt("0 0 15 * mon", at(2026, 3, 1, 1)) == at(2026, 3, 2)
    assert nxt("0 0 15 * mon", at(2026, 3, 13)) == at(2026, 3, 15)
    # Only the weekday restricted: Mondays only.
    assert nxt("0 0 * * 1", at(2026, 3, 3)) == at(2026, 3, 9)


def test_time_zones_and_dst() -> None:
    # 09:00 in New York is 14:00 UTC in winter and 13:00 UTC in summer.
    assert nxt("0 9 * * *", at(2026, 1, 10), "America/New_York") == at(2026, 1, 10, 14)
    assert nxt("0 9 * * *", at(2026, 7, 10), "America/New_York") == at(2026, 7, 10, 13)
    # 02:30 does not exist on 2026-03-08 there (clocks jump 02:00 -> 03:00): next day.
    assert nxt("30 2 * * *", at(2026, 3, 8, 5), "America/New_York") == at(2026, 3, 9, 6, 30)


def test_last_missed_tick() -> None:
    cron = Cron.parse("*/10 * * * *")
    now = at(2026, 1, 1, 10, 37)
    assert cron.last_at_or_before(now, at(2026, 1, 1, 9, 0), UTCZ) == at(2026, 1, 1, 10, 30)
    assert cron.last_at_or_before(now, at(2026, 1, 1, 10, 30), UTCZ) == at(2026, 1, 1, 10, 30)
    assert cron.last_at_or_before(now, at(2026, 1, 1, 10, 31), UTCZ) is None
    # A long outage: still the latest tick, found without walking every minute.
    monthly = Cron.parse("0 0 1 * *")
    assert monthly.last_at_or_before(at(2026, 5, 20), at(2025, 1, 1), UTCZ) == at(2026, 5, 1)
