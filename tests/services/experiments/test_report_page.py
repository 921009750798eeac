"""The report page's timeline drawn against time, loaded by a real headless Chromium: x follows the
points' timestamps (a 9-hour gap is 9 times a 1-hour one) between start and end labels, a single
time point is a marker with its error bar, and each arm has its bar chart's colour. And small
p-values stay readable on the page."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from feature_store.settings import Settings
from services.api.app import create_app
from services.experiments import analysis
from tests.services.conftest import live_server
from tests.services.experiments.test_report import CHROMIUM, assert_page_shows, create, create_at, plant_ab

AB = [{"name": "control"}, {"name": "treatment"}]


def test_the_page_shows_small_p_values_to_three_significant_digits(admin_client: TestClient,
                                                                   admin_settings: Settings) -> None:
    create(admin_client, {"id": "tiny", "kind": "ab", "arms": AB})
    plant_ab(admin_settings, "tiny", {"control": (1200, 120), "treatment": (1200, 325)})
    report = admin_client.get("/v1/experiments/tiny/report").json()
    p = report["arms"][1]["p_value"]
    assert p == pytest.approx(analysis.two_proportion_p(325, 1200, 120, 1200)) and p < 1e-20
    shown = assert_page_shows(report, admin_client.get("/experiments/tiny").text)
    assert float(shown["arms.1.p_value"]) == pytest.approx(p, rel=5e-3, abs=0)


def _dom(base: str, experiment: str) -> str:
    # Chromium aborts when its profile's socket paths pass the 107-byte limit of a Unix socket
    # (a long TMPDIR): its profile and temporary files go under a short directory of /tmp.
    with tempfile.TemporaryDirectory(prefix="chr-", dir="/tmp") as short:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={short}/p"]
        return subprocess.run([str(CHROMIUM), *flags, "--dump-dom", f"{base}/experiments/{experiment}"], check=True,
                              capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": short}).stdout


def _attributes(svg: str, tag: str) -> list[dict[str, str]]:
    return [dict(re.findall(r'([\w-]+)="([^"]*)"', element)) for element in re.findall(rf"<{tag}\b[^>]*>", svg)]


def _time_labels(svg: str) -> list[tuple[float, datetime]]:
    return [(float(x), datetime.strptime(text, "%Y-%m-%d %H:%M UTC").replace(tzinfo=timezone.utc))
            for x, text in re.findall(r'<text x="([\d.]+)"[^>]*>(\d{4}-\d\d-\d\d \d\d:\d\d UTC)</text>', svg)]


def _lift(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in report["timeline"] if p["series"] == "lift:treatment"]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium missing: `make test` installs it (apt-get install chromium)")
def test_the_timeline_is_drawn_against_time_in_chromium(admin_settings: Settings, registry_versions: list[str]) -> None:
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    create_at(admin_settings, {"id": "gap", "kind": "ab", "arms": AB}, hour - timedelta(hours=12))
    create_at(admin_settings, {"id": "one", "kind": "ab", "layer": "one", "arms": AB}, hour)
    # gap: traffic 11 and 10 hours ago, then none until an hour ago; one: all in this hour.
    for back, arms in ((11, {"control": (100, 10), "treatment": (100, 20)}), (10, {"control": (100, 10), "treatment": (100, 5)}),
                       (1, {"control": (1000, 100), "treatment": (1000, 300)})):
        plant_ab(admin_settings, "gap", arms, at=hour - timedelta(hours=back) + timedelta(minutes=30))
    plant_ab(admin_settings, "one", {"control": (400, 40), "treatment": (400, 60)}, at=hour)
    with live_server(create_app(admin_settings)) as base:
        reports = {name: httpx.get(f"{base}/v1/experiments/{name}/report", timeout=60).json() for name in ("gap", "one")}
        doms = {name: _dom(base, name) for name in ("gap", "one")}
    for name, dom in doms.items():
        assert_page_shows(reports[name], dom)
        bars, timeline = dom.split("<svg")[1:3]
        colours = [r["fill"] for r in _attributes(bars, "rect") if r["fill"] != "white"]
        assert len(set(colours)) == 2
        doms[name] = timeline
        lift = _lift(reports[name])
        if name == "gap":
            (line,) = _attributes(timeline, "polyline")
            assert line["stroke"] == colours[1]  # treatment's, as its bar
            ats = [datetime.fromisoformat(p["at"]) for p in lift]
            assert [at - ats[0] for at in ats] == [timedelta(0), timedelta(hours=1), timedelta(hours=10)]
            xs, ys = zip(*(map(float, xy.split(",")) for xy in line["points"].split()))
            span = (ats[-1] - ats[0]).total_seconds()
            for x, at in zip(xs, ats):
                assert (x - xs[0]) / (xs[-1] - xs[0]) == pytest.approx((at - ats[0]).total_seconds() / span, abs=2e-3)
            values = [p["value"] for p in lift]
            for y, value in zip(ys, values):  # y is linear in the value, larger values higher up
                assert (y - ys[0]) / (ys[-1] - ys[0]) == pytest.approx((value - values[0]) / (values[-1] - values[0]), abs=5e-3)
            assert ys[-1] < ys[0] and values[-1] > values[0]
            assert _time_labels(timeline) == [(xs[0], ats[0]), (xs[-1], ats[-1])]
        else:
            assert "<polyline" not in timeline and "<polygon" not in timeline
            (point,) = lift
            (marker,) = _attributes(timeline, "circle")
            bar = next(b for b in _attributes(timeline, "line") if b.get("stroke") == colours[1])
            assert marker["fill"] == colours[1] and marker["cx"] == bar["x1"] == bar["x2"]
            y_low, y_high, y = float(bar["y1"]), float(bar["y2"]), float(marker["cy"])
            assert y_high < y < y_low
            expected = (point["value"] - point["low"]) / (point["high"] - point["low"])
            assert (y_low - y) / (y_low - y_high) == pytest.approx(expected, abs=5e-3)
            (label,) = _time_labels(timeline)
            assert label == (float(marker["cx"]), datetime.fromisoformat(point["at"]))
