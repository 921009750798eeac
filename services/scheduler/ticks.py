"""Which cron ticks a scheduler has handled, and what it owes when it starts.

APScheduler keeps its jobs in memory and computes the next tick from the time it starts, so on its
own a restart across a tick would lose it silently. Each tick a scheduler handles (ran it, skipped
it, or counted it missed) is recorded in Redis beside the run lock (`<prefix>:training:last_tick`),
shared by every scheduler on that Redis; at start, the ticks due since then are coalesced into
one: run when the newest is at most `scheduler.misfire_grace_s` old, else counted missed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from apscheduler.triggers.cron import CronTrigger

from feature_store.redis_client import RedisClient

ONE_SECOND = timedelta(seconds=1)  # cron's ticks are whole minutes: the next one after a tick starts here


def last_tick_key(key_prefix: str) -> str:
    return f"{key_prefix}:training:last_tick"


class TickLog:
    """The newest tick handled by any scheduler sharing this Redis (RedisError when it does not answer)."""

    def __init__(self, client: RedisClient, key_prefix: str) -> None:
        self.client, self.key = client, last_tick_key(key_prefix)

    def last(self) -> datetime | None:
        value = self.client.get(self.key)
        return None if value is None else datetime.fromisoformat(value.decode())

    def handled(self, tick: datetime) -> None:
        self.client.set(self.key, tick.astimezone(timezone.utc).isoformat())


@dataclass(frozen=True)
class Owed:
    """What a starting scheduler owes: `run`, the newest due tick within the grace (run it now), or
    `missed`, the first tick due since the last handled one when all are older than the grace."""

    run: datetime | None = None
    missed: datetime | None = None


def owed_at_start(trigger: CronTrigger, last: datetime | None, now: datetime, grace_s: float) -> Owed:
    """With no tick recorded (a new Redis) nothing is known missed, but a tick within the grace runs."""
    since = now - timedelta(seconds=grace_s)
    if last is not None:
        since = max(since, last + ONE_SECOND)
    newest = latest_tick(trigger, since, now)
    if newest is not None:
        return Owed(run=newest)
    first = None if last is None else trigger.get_next_fire_time(None, last + ONE_SECOND)
    return Owed(missed=first if first is not None and first <= now else None)


def latest_tick(trigger: CronTrigger, since: datetime, until: datetime) -> datetime | None:
    """The newest tick of `trigger` in [since, until]."""
    latest, tick = None, trigger.get_next_fire_time(None, since)
    while tick is not None and tick <= until:
        latest, tick = tick, trigger.get_next_fire_time(tick, tick + ONE_SECOND)
    return latest
