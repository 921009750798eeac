"""The cluster launch scripts, run for real against stand-in clients (a `spark-submit` and a
`flink` that record their arguments and the signals they get) and, for the Spark conf, against
local Spark: what reaches the client's command line, the exit status, the cleanup, and a SIGTERM
or SIGINT to the script reaching the attached client before the script exits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.spark.session import BASE_CONF

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DEADLINE_S = 120  # generous: the shared machine is slow, and a passing run takes a few seconds

#: A stand-in for `spark-submit` and `flink run`: records its arguments (NUL-separated), checks the
#: code zip it was given, and exits $STATUS; with STATUS=attached it runs until SIGTERM, then takes
#: a moment to stop (a job's cancel), records whether the zip was still there, and exits 5.
FAKE_CLIENT = """#!/usr/bin/env bash
printf '%s\\0' "$@" > "$SUBMITTED"
zip= previous=
for arg in "$@"; do [[ $previous == --py-files || $previous == --pyFiles ]] && zip=$arg; previous=$arg; done
test -s "$zip" || exit 99
[[ $STATUS == attached ]] || exit "$STATUS"
stop() {
  sleep 1
  if test -s "$zip"; then echo "stopped, zip present"; else echo "stopped, zip gone"; fi >> "$MARK"
  exit 5
}
trap stop TERM
echo started >> "$MARK"
while :; do sleep 0.1; done
"""


def script_env(tmp_path: Path, status: str, **extra: str) -> dict[str, str]:
    """The stand-ins on PATH and under FLINK_HOME, a private TMPDIR, and no inherited settings."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("spark-submit", "flink"):
        (bin_dir / name).write_text(FAKE_CLIENT)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "REDIS_URL", "PYSPARK_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", FLINK_HOME=str(tmp_path), TMPDIR=str(tmp_path / "tmp"),
               SPARK_MASTER="spark://master:7077", PYSPARK_PYTHON=sys.executable, PYTHON=sys.executable,
               SUBMITTED=str(tmp_path / "args"), MARK=str(tmp_path / "mark"), STATUS=status, **extra)
    return env


def submitted(tmp_path: Path) -> list[str]:
    return (tmp_path / "args").read_text().split("\0")[:-1]


def conf_entries(args: list[str]) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == "--conf"]


@pytest.mark.parametrize("status", [0, 3])
def test_spark_submit_script_passes_the_session_conf_and_cleans_up(status: int, tmp_path: Path) -> None:
    """spark-submit starts the driver's JVM before the job's SparkSession builder runs, so every
    entry of the session's conf (base conf, settings, RECSYS_SPARK__EXTRA_CONF: a connector's
    spark.jars too) is on its command line, values intact; the code zip is removed afterwards, and
    the script exits with spark-submit's status."""
    extra = {
        "spark.jars": "/opt/jars/hadoop-aws.jar,/opt/jars/aws-sdk.jar",
        "spark.jars.packages": "org.apache.hadoop:hadoop-aws:3.3.4",
        "spark.driver.extraClassPath": "/opt/jars/*",
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC -Dname=\"a b\" -Dq='c'",
        "spark.executor.extraJavaOptions": "-Dline=one\ntwo",
    }
    env = script_env(tmp_path, str(status), RECSYS_SPARK__DRIVER_MEMORY="3g",
                     RECSYS_SPARK__SHUFFLE_PARTITIONS="5", RECSYS_SPARK__EXTRA_CONF=json.dumps(extra))
    result = subprocess.run(["bash", str(INFRA / "spark/submit.sh"), "compact"], env=env,
                            check=False, capture_output=True, text=True, timeout=DEADLINE_S)
    assert result.returncode == status, result.stderr
    args = submitted(tmp_path)
    assert args[args.index("--master") + 1] == "spark://master:7077"
    expected = {**BASE_CONF, "spark.driver.memory": "3g", "spark.sql.shuffle.partitions": "5", **extra}
    entries = conf_entries(args)
    assert sorted(entries) == sorted(f"{key}={value}" for key, value in expected.items())
    assert args[-1] == str(ROOT / "pipelines/spark/jobs/compact.py")
    assert not list((tmp_path / "tmp").iterdir()), "the code zip was left behind"


def wait_for(path: Path, text: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not (path.exists() and text in path.read_text()):
        assert process.poll() is None, f"the script exited first: {process.communicate()}"
        assert time.monotonic() < deadline, f"no {text!r} in {path} after {DEADLINE_S} s"
        time.sleep(0.1)


def _signals_as_a_terminal_gives_them() -> None:
    """SIGINT at its default in the script. A shell cannot trap a signal it was started with
    ignored, and a test runner started in the background by a non-interactive shell (`cmd &`, as
    CI may start it) has SIGINT ignored, which every child inherits."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


SCRIPTS = {"flink": ["flink/run.sh", "--state-dir", "/unused"], "spark": ["spark/submit.sh", "compact"]}


SIGNALS = [("flink", signal.SIGTERM), ("flink", signal.SIGINT), ("spark", signal.SIGTERM)]


@pytest.mark.parametrize(("script", "sig"), SIGNALS, ids=[f"{name}-{sig.name}" for name, sig in SIGNALS])
def test_a_signal_to_the_script_stops_its_attached_client(
    script: str, sig: signal.Signals, tmp_path: Path
) -> None:
    """`docker stop`, a pod's deletion or Ctrl-C signals the script, not its client: the client
    (whose job main cancels the Flink job on SIGTERM) must get SIGTERM, and the script must outlast
    it, so the cancel completes and a restarted pod does not run a second copy of the job."""
    path, *args = SCRIPTS[script]
    process = subprocess.Popen(
        ["bash", str(INFRA / path), *args], env=script_env(tmp_path, "attached"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=_signals_as_a_terminal_gives_them,
    )  # fmt: skip
    try:
        wait_for(tmp_path / "mark", "started", process)
        process.send_signal(sig)
        try:
            status = process.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            mark = (tmp_path / "mark").read_text()
            pytest.fail(f"{path} still running {DEADLINE_S} s after {sig.name}; the client's record: {mark}")
        assert (tmp_path / "mark").read_text().splitlines() == ["started", "stopped, zip present"]
        assert status == 5, process.communicate()  # the client's own status
        assert not list((tmp_path / "tmp").iterdir()), "the code zip was left behind"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.communicate()


PROBE_FS = """
import java.net.URI;
import org.apache.hadoop.fs.RawLocalFileSystem;
public class ProbeFS extends RawLocalFileSystem {
  @Override public URI getUri() { return URI.create("probe:///"); }
  @Override public String getScheme() { return "probe"; }
}
"""

EVENT = (
    '{{"event_id":"e{n}","user_id":"u1","item_id":"i{n}","type":"click","value":null,"ts":"2024-01-01T00:00:0{n}Z",'
    '"context":{{"request_id":"r1","position":{n},"page":null,"experiment":null,"arm":null,"policy":null,'
    '"propensity":null,"team":null,"ranks":null,"ranker_propensities":null,"model_versions":null,'
    '"candidates":null,"candidate_scores":null,"candidate_count":null}}}}'
)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("javac") is None or shutil.which("jar") is None, reason="needs a JDK")
def test_spark_submit_script_loads_a_connector_jar_from_the_settings(tmp_path: Path) -> None:
    """A filesystem connector named in RECSYS_SPARK__EXTRA_CONF (spark.jars; ProbeFS stands in for
    hadoop-aws's S3AFileSystem) must be on the driver's classpath when the job reads its events
    through the connector's scheme, as it is under `recsys batch`, on local Spark."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    (tmp_path / "src").mkdir()
    (tmp_path / "src/ProbeFS.java").write_text(PROBE_FS)
    classes, jar = tmp_path / "classes", tmp_path / "probefs.jar"
    javac = ["javac", "-nowarn", "-cp", f"{jars}/*", "-d", str(classes), str(tmp_path / "src/ProbeFS.java")]
    subprocess.run(javac, check=True, timeout=DEADLINE_S)
    subprocess.run(["jar", "cf", str(jar), "-C", str(classes), "."], check=True, timeout=DEADLINE_S)
    events = tmp_path / "events/dt=2024-01-01"
    events.mkdir(parents=True)
    (events / "part-0.jsonl").write_text("".join(EVENT.format(n=n) + "\n" for n in range(3)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "REDIS_URL", "PYSPARK_", "SPARK_"))}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", PYSPARK_PYTHON=sys.executable,
               SPARK_MASTER="local[1]", TMPDIR=str(tmp_path), RECSYS_STATE_DIR=str(tmp_path / "state"),
               RECSYS_BATCH__EVENTS_URI=f"probe://{tmp_path}/events", RECSYS_SPARK__DRIVER_MEMORY="1g",
               RECSYS_SPARK__EXTRA_CONF=json.dumps({"spark.jars": str(jar), "spark.hadoop.fs.probe.impl": "ProbeFS"}))
    result = subprocess.run(["bash", str(INFRA / "spark/submit.sh"), "compact"], env=env,
                            check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"job": "compact", "rows_in": 3,' in result.stdout + result.stderr
