"""`recsys experiments` in a child process on the real Redis: create, list, get, report, stop, and
errors naming the file (and the line of broken JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from feature_store.redis_server import free_port
from feature_store.settings import Settings
from tests.services.test_cli_errors import ROOT


def recsys(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RECSYS_REDIS__URL": str(settings.redis.url), "RECSYS_STATE_DIR": str(settings.state_dir)}
    command = [sys.executable, "-c", "from services.cli import app; app()", "experiments", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_create_list_report_stop(api_settings: Settings, tmp_path: Path) -> None:
    definition = tmp_path / "exp.json"
    definition.write_text(json.dumps({"id": "cli1", "kind": "ab", "traffic": 0.3,
                                      "arms": [{"name": "control"}, {"name": "treatment"}]}))
    created = recsys(api_settings, "create", str(definition))
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["offset"] == 0.0
    assert recsys(api_settings, "list").stdout.split("\t")[:3] == ["cli1", "ab", "default"]
    report = json.loads(recsys(api_settings, "report", "cli1", "--json").stdout)
    assert [arm["impressions"] for arm in report["arms"]] == [0, 0]
    assert recsys(api_settings, "stop", "cli1").stdout.strip() == "cli1: stopped"
    assert json.loads(recsys(api_settings, "get", "cli1").stdout)["status"] == "stopped"
    assert (api_settings.state_dir / "experiments" / "cli1.json").is_file()


def test_errors_name_the_file_and_the_line(api_settings: Settings, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"id": "x",\n "kind": "ab",\n "arms": [}\n')
    result = recsys(api_settings, "create", str(broken))
    assert result.returncode == 2 and result.stderr.startswith(f"error: {broken}: ")
    assert "line 3" in result.stderr
    shares = tmp_path / "shares.json"
    shares.write_text(json.dumps({"id": "x", "kind": "ab", "arms": [{"name": "a", "share": 0.9}, {"name": "b", "share": 0.9}]}))
    result = recsys(api_settings, "create", str(shares))
    assert result.returncode == 2 and "shares must sum to 1" in result.stderr
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'\xff\xfe{}')
    result = recsys(api_settings, "create", str(latin))
    assert result.returncode == 2 and result.stderr == f"error: {latin}: not valid utf-8 (byte 0)\n"
    missing = recsys(api_settings, "stop", "nope")
    assert missing.returncode == 2 and "error: no experiment 'nope'" in missing.stderr


def test_with_redis_down_list_reads_the_files_and_writes_fail_in_one_line(api_settings: Settings, tmp_path: Path) -> None:
    definition = tmp_path / "exp.json"
    definition.write_text(json.dumps({"id": "cli2", "kind": "ab", "arms": [{"name": "a"}, {"name": "b"}]}))
    assert recsys(api_settings, "create", str(definition)).returncode == 0
    down = api_settings.model_copy(update={"redis": api_settings.redis.model_copy(
        update={"url": f"redis://127.0.0.1:{free_port()}/0"})})  # nothing listens there: refused at once
    assert recsys(down, "list").stdout.split("\t")[:2] == ["cli2", "ab"]  # the files, not "nothing"
    stopped = recsys(down, "stop", "cli2")
    assert stopped.returncode == 2 and stopped.stderr.startswith("error: Redis did not answer") and stopped.stderr.count("\n") == 1
    assert json.loads(recsys(api_settings, "get", "cli2").stdout)["status"] == "running"  # not changed


def test_a_redis_that_refuses_the_write_is_named_as_refusing_and_nothing_is_created(
    api_settings: Settings, redis_client: Any, tmp_path: Path
) -> None:
    definition = tmp_path / "exp.json"
    definition.write_text(json.dumps({"id": "cli3", "kind": "ab", "arms": [{"name": "a"}, {"name": "b"}]}))
    # A misconfigured deployment: the service's Redis user may read but not write.
    redis_client.execute_command("ACL", "SETUSER", "reader", "on", ">pw", "~*", "+@read", "+@connection", "+multi", "+exec")
    try:
        url = str(api_settings.redis.url).replace("redis://", "redis://reader:pw@", 1)
        read_only = api_settings.model_copy(update={"redis": api_settings.redis.model_copy(update={"url": url})})
        created = recsys(read_only, "create", str(definition))
    finally:
        redis_client.execute_command("ACL", "DELUSER", "reader")
    assert created.returncode == 2 and created.stderr.count("\n") == 1
    assert created.stderr.startswith("error: Redis refused the command (") and "no permissions" in created.stderr
    assert not (api_settings.state_dir / "experiments" / "cli3.json").exists()


def test_the_text_report_shows_the_per_user_test_when_an_arm_has_no_click(api_settings: Settings, tmp_path: Path) -> None:
    """The lift is undefined where the first arm has no click, but the per-user test's users and
    p-value (which docs/experiments.md says to decide with) still print, as in the JSON."""
    from tests.services.experiments.test_report import write_impressions

    definition = tmp_path / "exp.json"
    definition.write_text(json.dumps({"id": "cli4", "kind": "ab", "arms": [{"name": "control"}, {"name": "treatment"}]}))
    assert recsys(api_settings, "create", str(definition)).returncode == 0
    clicks = {"control": [0] * 30, "treatment": [user % 3 for user in range(29)]}  # 10 impressions each
    rows: dict[str, list] = {k: [] for k in ("event_id", "user_id", "arm", "click", "ts", "experiment")}
    for arm, counts in clicks.items():
        for user, count in enumerate(counts):
            for slot in range(10):
                for name, value in (("event_id", f"{arm}-{user}-{slot}"), ("user_id", f"{arm}-u{user}"), ("arm", f"cli4:{arm}"),
                                    ("click", int(slot < count)), ("ts", datetime.now(timezone.utc)), ("experiment", "cli4")):
                    rows[name].append(value)
    write_impressions(api_settings, rows, "cli4")
    (control, treatment) = json.loads(recsys(api_settings, "report", "cli4", "--json").stdout)["arms"]
    assert (control["users"], treatment["users"], treatment["user_lift"]) == (30, 29, None)
    assert treatment["user_p_value"] is not None
    printed = recsys(api_settings, "report", "cli4")
    assert printed.returncode == 0, printed.stderr
    assert (f"  per user (29 users; control: 30): lift undefined (an arm has no click) "
            f"p={treatment['user_p_value']:.3g}\n") in printed.stdout, printed.stdout
