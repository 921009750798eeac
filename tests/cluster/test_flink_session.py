"""The speed-layer job on a Flink session cluster (a jobmanager and a task manager on loopback,
started from apache-flink's own `bin/`), submitted with `flink run --python` through
`infra/flink/run.sh`, the project's code shipped as a `--pyFiles` zip.

It reads the same event log as a mini-cluster run of the job (`recsys stream run`'s path) and must
end with the same attributed counts and misses in Redis, both equal to the rule's oracle
(`reference_counts`). Midway the task manager is SIGKILLed while events flow (its JVM and Python
workers at once), events are appended while no task manager runs, and a new one is started: the
jobmanager restores the job from its last completed checkpoint (the REST API must report the
restore) and the replayed records add nothing (exactly-once effect through the replay markers).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest
import redis

from feature_store.attribution import reference_counts
from feature_store.event_log import LocalEventLog
from feature_store.settings import EventLogSettings, Settings
from pipelines.flink.runner import StreamJob, latest_checkpoint
from tests.cluster.flink_session import FlinkSession, kill_group
from tests.pipelines.flink.test_flink_stream_job import (
    LATENESS, OUT_OF_ORDERNESS, TICK_MARGIN, WINDOW, at, counts, impressions_recorded, make_events, misses, wait_for,
    wait_for_counts,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]


class Submission:
    """`infra/flink/run.sh` in its own process group: the `flink run` client, attached to the job
    (its Python main polls the job until stopped). Duck-types `StreamJob` for `wait_for`."""

    def __init__(self, state_dir: Path, env: dict[str, str], log_file: Path) -> None:
        self.log_file = log_file
        with log_file.open("wb") as out:
            self.process = subprocess.Popen(
                [str(ROOT / "infra" / "flink" / "run.sh"), "--state-dir", str(state_dir)], env=env, cwd=ROOT,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        kill_group(self.process, signal.SIGKILL)


@pytest.fixture
def flink_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlinkSession]:
    session = FlinkSession(tmp_path_factory.mktemp("flink-session"))
    try:
        yield session.start()
    finally:
        session.stop()


def job_env(url: str, prefix: str, checkpoints: Path) -> dict[str, str]:
    return {
        "RECSYS_REDIS__URL": url, "RECSYS_REDIS__KEY_PREFIX": prefix,
        "RECSYS_FLINK__CHECKPOINT_DIR": str(checkpoints), "RECSYS_FLINK__CHECKPOINT_INTERVAL_MS": "1000",
        "RECSYS_FLINK__ALLOWED_LATENESS_MS": str(int(LATENESS.total_seconds() * 1000)),
        "RECSYS_FLINK__OUT_OF_ORDERNESS_MS": str(int(OUT_OF_ORDERNESS.total_seconds() * 1000)),
        "RECSYS_ATTRIBUTION__WINDOW_S": str(WINDOW.total_seconds()),
    }


def the_job_id(session: FlinkSession) -> str:
    jobs = [job["jid"] for job in session.rest("/jobs/overview")["jobs"] if job["state"] == "RUNNING"]
    assert len(jobs) == 1, jobs
    return str(jobs[0])


def test_the_stream_job_on_a_session_cluster_equals_the_mini_cluster_run_and_survives_a_lost_taskmanager(
    flink_session: FlinkSession, settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    url = settings.redis.url or ""
    start = datetime.now(timezone.utc).replace(minute=30, second=0, microsecond=0) - timedelta(hours=2)
    log = LocalEventLog(settings.event_log_dir, EventLogSettings(roll_max_age_s=0.1, fsync=False))
    first, second, third = make_events(0, 120, start), make_events(120, 80, start), make_events(200, 80, start)
    log.append(first + first[:5])  # with a client retry
    log.roll_all()
    mini = StreamJob(settings.state_dir, log_file=tmp_path / "mini.log",
                     env=job_env(url, "mini", tmp_path / "mini-chk")).start()
    session_checkpoints = tmp_path / "session-chk"
    submission = Submission(settings.state_dir, {
        **flink_session.env, **job_env(url, "session", session_checkpoints), "PYTHON": sys.executable,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }, tmp_path / "submit.log")
    jobs = [mini, submission]
    try:
        wait_for(lambda: impressions_recorded(redis_client, "session", first), "the first events",
                 jobs, timeout_s=240)
        job_id = the_job_id(flink_session)
        # The code the Python workers import came with the job: the task manager unpacked the zip.
        assert list(flink_session.tmp_dir.glob("python-dist-*/python-files/*/recsys/feature_store/attribution_store.py"))
        checkpointed = time.time()
        wait_for(lambda: _checkpoint_after(session_checkpoints, checkpointed), "a checkpoint", jobs)
        log.append(second)
        log.roll_all()
        time.sleep(0.3)  # let part of it through, so the restore replays records applied after the checkpoint
        flink_session.kill_taskmanager()
        log.append(third)  # appended while no task manager runs: must not be a gap
        log.roll_all()
        flink_session.start_taskmanager()
        for name in ("session", "mini"):  # so the watermark is past `start`
            wait_for(lambda: impressions_recorded(redis_client, name, second + third), "the restart",
                     jobs, timeout_s=240)
        newest = third[-1].ts
        # Moves the watermark past every outcome's time plus the allowed lateness, when outcomes
        # without a request id (or whose impression has not come) are decided.
        tick = at("tick", "u9", "i9", "impression", newest + LATENESS + TICK_MARGIN)
        log.append([tick])
        log.roll_all()
        expected = reference_counts(first + second + third + [tick], int(WINDOW.total_seconds() * 1000))
        wait_for_counts(url, "mini", expected, mini)
        wait_for_counts(url, "session", expected, submission)  # type: ignore[arg-type]
        restored = flink_session.rest(f"/jobs/{job_id}/checkpoints")
    finally:
        submission.stop()
        mini.stop()
        log.close()

    assert the_restore(restored), restored
    assert counts(url, "session") == counts(url, "mini") == expected
    assert misses(url, "session") == misses(url, "mini")
    assert sum(n for key, n in expected.items() if key[3] == "click") >= 20
    assert sum(n for name, n in misses(url, "session").items() if name.startswith("unattributed:")) > 0


def _checkpoint_after(checkpoint_dir: Path, moment: float) -> bool:
    latest = latest_checkpoint(checkpoint_dir)
    return latest is not None and (latest / "_metadata").stat().st_mtime > moment


def the_restore(stats: dict) -> bool:  # type: ignore[type-arg]
    """The job was restored from a completed checkpoint (not restarted from scratch)."""
    restored = stats["latest"]["restored"]
    return stats["counts"]["restored"] >= 1 and restored is not None and not restored["is_savepoint"]
