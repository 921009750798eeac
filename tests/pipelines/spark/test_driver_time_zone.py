"""The batch layer's times do not depend on the driver's local time zone: PySpark hands a collected
timestamp to Python as a naive local datetime, so a watermark read that way on a driver in Tokyo
lands 9 hours in the future (and the online read then ignores every live event until then)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from pipelines.spark.jobs.batch_features import watermark_of

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def tokyo_driver(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    assert time.localtime(0).tm_hour == 9  # the zone is installed: the test means what it says
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("tokyo_driver")
def test_the_watermark_is_the_newest_events_hour_in_utc(spark: object) -> None:
    newest = datetime(2026, 3, 1, 13, 30, 12, tzinfo=timezone.utc)
    events = spark.createDataFrame(  # type: ignore[attr-defined]
        [(newest - timedelta(hours=5),), (newest,), (newest + timedelta(days=400),)], "ts timestamp")
    now = newest + timedelta(minutes=10)  # the far-future event is not covered
    assert watermark_of(events, now, timedelta(days=2)) == datetime(2026, 3, 1, 13, tzinfo=timezone.utc)
