"""`recsys run`: the whole stack on one machine, behind `make run`.

Stages, in order: Redis (embedded unless a URL is configured) → data import (MovieLens from a
path, or synthetic) → the training DAG with fast settings (`pipelines.training.dag.FAST_TRAINING`:
the Spark batch chain, embeddings + recall index, a DIN ranker, the quality gate, promotion) →
the Flink speed layer → the API on port 8000. It prints a sample recommendation with
its reasons and the URLs, then serves until Ctrl-C (or SIGTERM), which stops the API, the
streaming job and Redis cleanly. `--no-serve` stops after the sample (for smoke tests and CI-like checks).

Every stage is the same code as its own command (`recsys data …`, `recsys train run`,
`recsys stream run`, `recsys serve`), so one path trains models: on a fresh state directory
nothing is blessed yet and the gate judges the candidates by its floors alone; a candidate it
rejects is not served (the API falls back to what it has) and the run says so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Callable

import httpx
import typer
from rich.table import Table

from feature_store.redis_server import redis_url
from feature_store.settings import Settings
from services.cli.common import StateDirOption, console, ensure_port_free, fail, load_settings, printable, styled


def run(
    movielens: Annotated[
        Path | None,
        typer.Option(help="MovieLens directory (ml-100k, ml-1m or ml-latest-small); synthetic data if omitted."),
    ] = None,
    synth_events: Annotated[int, typer.Option(help="Events to generate when no MovieLens path is given.")] = 100_000,
    synth_seed: Annotated[int, typer.Option(help="Seed of the synthetic data (another seed, another population).")] = 0,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Keep serving until Ctrl-C.")] = True,
    port: Annotated[int | None, typer.Option(help="API port (default: settings.api.port).")] = None,
    state_dir: StateDirOption = None,
) -> None:
    """Bring up the whole stack locally on embedded defaults, show a sample, serve until Ctrl-C."""
    _stop_on_signals()
    settings = load_settings(state_dir)
    if movielens is not None and not movielens.is_dir():
        fail(f"{movielens} is not a directory")
    port = port or settings.api.port
    ensure_port_free(settings.api.host, port)
    timings: dict[str, float] = {}
    with redis_url(settings) as url:
        # Every stage (in this process or a child) reads the same resolved settings.
        os.environ["RECSYS_REDIS__URL"] = url
        os.environ["RECSYS_STATE_DIR"] = str(settings.state_dir.resolve())
        state = settings.state_dir.resolve()
        if not settings.redis.url:
            console.print(f"redis {url} (embedded): other `recsys` commands on this state directory share it "
                          f"automatically while this runs; elsewhere, export REDIS_URL={url}")
        _stage("data", timings, lambda: _import_data(state, movielens, synth_events, synth_seed))
        timings |= _train(load_settings(state))
        with _background(_stream_job(state), "speed layer (Flink)"), _background(
            _api_process(state, port), "API"
        ) as api:
            base = f"http://127.0.0.1:{port}"
            _wait_ready(base, api, state / "logs" / "api.log")
            _show_sample(base, settings)
            _summary(settings, url, base, timings)
            if serve:
                console.print(styled(("serving", "bold"), ": press Ctrl-C to stop"))
                _wait_for_interrupt()
    console.print(styled(("recsys run", "bold"), " stopped cleanly"))


def _stage(name: str, timings: dict[str, float], work: Callable[[], None]) -> None:
    console.rule(styled((name, "bold")))
    started = time.perf_counter()
    work()
    timings[name] = time.perf_counter() - started


def _import_data(state_dir: Path, movielens: Path | None, synth_events: int, synth_seed: int) -> None:
    from services.cli import data

    if movielens is not None:
        data.import_movielens(movielens, strict=False, state_dir=state_dir)
    else:
        data.synth(events=synth_events, seed=synth_seed, state_dir=state_dir)


def _train(settings: Settings) -> dict[str, float]:
    """The training DAG with fast settings; each step's seconds. A candidate the gate rejects
    is reported and not served; a failed step stops `recsys run` with the run's id to resume."""
    from pipelines.training.dag import fast, history, run_training
    from pipelines.training.executor import StepFailed
    from services.cli import train

    try:
        record = run_training(fast(settings), trigger="recsys run", progress=train.show_step)
    except StepFailed as exc:
        run_id = history(settings, limit=1)[0].run_id
        fail(f"training run {run_id} failed: {exc}; `recsys train history --run {run_id}` shows it, "
             f"`recsys train run --resume {run_id}` continues it")  # fmt: skip
        return {}
    train.show_run(record)
    for role, blessed in record.step("gate").outputs["blessed"].items():
        if not blessed:
            console.print(styled((f"the {role} candidate did not pass the quality gate and is not served", "yellow"),
                                 f" (`recsys train history --run {record.run_id}` shows why)"))  # fmt: skip
    return {f"training: {step.name}": step.duration_s or 0.0 for step in record.steps}


class _background:
    """Runs a child process for the duration of a `with` block; stops it cleanly on exit."""

    def __init__(self, start: Callable[[], subprocess.Popen[bytes]], name: str) -> None:
        self.start, self.name = start, name
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> subprocess.Popen[bytes]:
        console.rule(styled((self.name, "bold")))
        self.process = self.start()
        return self.process

    def __exit__(self, *exc: object) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        console.print(f"stopped {self.name}")


def _child(args: list[str], log_file: Path) -> subprocess.Popen[bytes]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        # Own process group: Ctrl-C reaches only us, and we stop the child in order.
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stream_job(state_dir: Path) -> Callable[[], subprocess.Popen[bytes]]:
    log = state_dir / "logs" / "stream.log"
    console.print(f"Flink job log: {log}")
    return lambda: _child(
        [sys.executable, "-m", "pipelines.flink.job", "--state-dir", str(state_dir), "--resume"], log
    )


def _api_process(state_dir: Path, port: int) -> Callable[[], subprocess.Popen[bytes]]:
    log = state_dir / "logs" / "api.log"
    console.print(f"API log: {log}")
    recsys = [sys.executable, "-c", "from services.cli import app; app()"]
    return lambda: _child([*recsys, "serve", "--port", str(port), "--state-dir", str(state_dir)], log)


def _wait_ready(base: str, api: subprocess.Popen[bytes], log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if api.poll() is not None:
            fail(f"the API exited with code {api.returncode}; see {log}")
        try:
            response = httpx.get(f"{base}/readyz", timeout=2.0)
            # Ready, and the catalog (titles, categories) loaded, so the sample is complete.
            if response.status_code == 200 and response.json().get("catalog") not in ("idle", "syncing"):
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.5)
    fail(f"the API at {base} did not become ready in {timeout_s:.0f}s: {last}; see {log}")


def _sample_user(settings: Settings) -> str:
    """The user with the most positive interactions in the batch view, so the sample shows
    personal recommendations with reasons rather than a cold-start list."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    users = ds.dataset(settings.batch_dir / "features" / "user", format="parquet")
    table = users.to_table(columns=["user_id", "positive_count"])
    if table.num_rows == 0:
        fail("the batch layer published no users")
    return str(table["user_id"][pc.index(table["positive_count"], pc.max(table["positive_count"])).as_py()])


def _show_sample(base: str, settings: Settings) -> None:
    user_id = _sample_user(settings)
    response = httpx.get(f"{base}/v1/users/{user_id}/recommendations", params={"k": 5}, timeout=10.0)
    if response.status_code != 200:
        fail(f"sample recommendation failed: HTTP {response.status_code}: {response.text[:300]}")
    body = response.json()
    if not body["items"]:
        fail(f"the sample recommendation for user {user_id} is empty: {body}")
    table = Table(title=f"GET /v1/users/{user_id}/recommendations?k=5")
    for column in ("item", "score", "sources", "reason"):
        table.add_column(column)
    for item in body["items"]:
        table.add_row(printable(item["item_id"]), f"{item['score']:.4f}", printable(", ".join(item["sources"])),
                      printable(item["reason"]))
    console.print(table)
    console.print(f"models: {body.get('model_versions')}  degraded: {body.get('degraded')}")


def _summary(settings: Settings, url: str, base: str, timings: dict[str, float]) -> None:
    table = Table(title="recsys run", show_header=False)
    table.add_row("redis", url + ("" if settings.redis.url else " (embedded)"))
    table.add_row("state directory", str(settings.state_dir.resolve()))
    for name, seconds in timings.items():
        table.add_row(name, f"{seconds:.1f} s")
    table.add_row("API", f"{base}/v1/users/<user_id>/recommendations")
    table.add_row("API docs", f"{base}/docs")
    table.add_row("metrics", f"{base}/metrics")
    console.print(table)


def _stop_on_signals() -> None:
    """SIGTERM (a service manager, `kill`) stops the stack the way Ctrl-C does, at any stage, and
    Ctrl-C works even when a shell started us with SIGINT ignored (`cmd &`)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _wait_for_interrupt() -> None:
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        # One stop at a time: a second signal must not cut the children's shutdown short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        console.print("stopping …")
