"""Five-field cron expressions: parse once, then find the next tick in a time zone. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

FIELDS = ("minute", "hour", "day of month", "month", "day of week")
RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
NAMES: tuple[dict[str, int], ...] = (
    {},
    {},
    {},
    {m: n for n, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)},
    {d: n for n, d in enumerate("sun mon tue wed thu fri sat".split())},
)
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# Searching further than this many years ahead means the expression never matches.
HORIZON_YEARS = 8


class CronError(ValueError):
    pass


def _value(text: str, index: int) -> int:
    names = NAMES[index]
    if text.lower() in names:
        return names[text.lower()]
    if not text.isdigit():
        raise CronError(f"{FIELDS[index]}: {text!r} is not a number")
    lo, hi = RANGES[index]
    value = int(text)
    if not lo <= value <= hi:
        raise CronError(f"{FIELDS[index]}: {value} is outside {lo}-{hi}")
    return value


def _field(text: str, index: int) -> frozenset[int]:
    lo, hi = RANGES[index]
    out: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{FIELDS[index]}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            start, end = lo, hi
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = _value(a, index), _value(b, index)
            if start > end:
                raise CronError(f"{FIELDS[index]}: range {base!r} runs backwards")
        else:
            start = _value(base, index)
            end = hi if slash else start
        out.update(range(start, end + 1, step))
    if index == 4 and 7 in out:  # 7 is Sunday too
        out.discard(7)
        out.add(0)
    return frozenset(out)


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    # Standard cron: when both day fields are restricted, either one matching is enough.
    either_day: bool

    @classmethod
    def parse(cls, expr: str) -> Cron:
        text = MACROS.get(expr.strip().lower(), expr)
        parts = text.split()
        if len(parts) != 5:
            raise CronError(f"expected 5 fields (minute hour day month weekday), got {len(parts)}")
        minutes, hours, days, months, weekdays = (_field(p, i) for i, p in enumerate(parts))
        either = parts[2] != "*" and parts[4] != "*"
        cron = cls(minutes, hours, days, months, weekdays, either)
        cron.next_after(datetime(2000, 1, 1, tzinfo=UTC), ZoneInfo("UTC"))  # never matching?
        return cron

    def _day_matches(self, day: datetime) -> bool:
        dom = day.day in self.days
        dow = (day.weekday() + 1) % 7 in self.weekdays
        return (dom or dow) if self.either_day else (dom and dow)

    def next_after(self, after: datetime, tz: ZoneInfo) -> datetime:
        """The first tick strictly after `after` (aware), in UTC; local times in `tz`."""
        local = after.astimezone(tz).replace(second=0, microsecond=0, tzinfo=None)
        local += timedelta(minutes=1)
        limit = local.year + HORIZON_YEARS
        while local.year <= limit:
            if local.month not in self.months:
                year, month = divmod(local.month, 12)
                local = datetime(local.year + year, month + 1, 1)
                continue
            if not self._day_matches(local):
                local = datetime(local.year, local.month, local.day) + timedelta(days=1)
                continue
            if local.hour not in self.hours:
                local = local.replace(minute=0) + timedelta(hours=1)
                continue
            if local.minute not in self.minutes:
                local += timedelta(minutes=1)
                continue
            aware = local.replace(tzinfo=tz)
            # A local time skipped by a DST change does not exist: move on.
            if aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != local:
                local += timedelta(minutes=1)
                continue
            return aware.astimezone(UTC)
        raise CronError("the expression never matches a date")

    def last_at_or_before(self, now: datetime, since: datetime, tz: ZoneInfo) -> datetime | None:
        """The latest tick in [since, now]: the one missed tick worth catching up."""
        # A long outage with a frequent schedule: look at the recent past first.
        recent = max(since, now - timedelta(days=2))
        found = self._last_between(recent, now, tz)
        if found is None and recent > since:
            found = self._last_between(since, now, tz)
        return found

    def _last_between(self, since: datetime, now: datetime, tz: ZoneInfo) -> datetime | None:
        found: datetime | None = None
        tick = self.next_after(since - timedelta(minutes=1), tz)
        while tick <= now:
            found = tick
            tick = self.next_after(tick, tz)
        return found
