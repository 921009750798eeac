"""`recsys train …`: train models and publish them through the model registry."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.cli.common import StateDirOption, add_id_column, console, fail, load_settings, printable, styled

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # a file name under the runs folder

app = typer.Typer(help="Train models and publish them to the model registry.", no_args_is_help=True)


@app.command("embeddings")
def embeddings(
    state_dir: StateDirOption = None,
    sequences: Annotated[Path | None, typer.Option(help="Sequences Parquet file or folder from `recsys batch sequences` (default: build from the event log).")] = None,
    graph: Annotated[Path | None, typer.Option(help="Item-graph Parquet from the batch layer (default: transitions of the sequences).")] = None,
    walks: Annotated[Path | None, typer.Option(help="Walks from `recsys batch random_walks`: its walks/ folder (deepwalk/, node2vec/; a model without its folder walks here) or one walks Parquet for every walk model (default: walk here).")] = None,
    models: Annotated[str, typer.Option(help="Comma-separated: item2vec, deepwalk, node2vec.")] = "item2vec,deepwalk,node2vec",
    dim: Annotated[int, typer.Option(min=2)] = 64,
    window: Annotated[int, typer.Option(min=1)] = 5,
    negatives: Annotated[int, typer.Option(min=1)] = 5,
    epochs: Annotated[int, typer.Option(min=1)] = 5,
    batch_size: Annotated[int, typer.Option(min=1)] = 1024,
    walks_per_node: Annotated[int, typer.Option(min=1)] = 10,
    walk_length: Annotated[int, typer.Option(min=2)] = 40,
    p: Annotated[float, typer.Option(help="Node2vec return parameter.")] = 0.5,
    q: Annotated[float, typer.Option(help="Node2vec in-out parameter.")] = 2.0,
    index_kind: Annotated[str, typer.Option(help="auto, exact, hnsw, ivf or lsh.")] = "auto",
    evaluate_models: Annotated[bool, typer.Option("--eval/--no-eval", help="Leave-last-one-out evaluation table.")] = False,
    publish: Annotated[bool, typer.Option("--publish/--no-publish", help="Publish to the registry and make it current.")] = True,
    seed: int = 0,
) -> None:
    """Train Item2vec, DeepWalk and Node2vec embeddings, build their recall indexes, and publish
    the recall artifact. With --eval, hold out each user's last positive (the embeddings never
    see it) and print HR@10, NDCG@10, HR@50 and Recall@50 against Pop and ItemKNN."""
    from models.embeddings.skipgram import SkipGramConfig
    from models.embeddings.training import EmbeddingTrainingConfig, WalkConfig

    settings = load_settings(state_dir)
    try:
        config = EmbeddingTrainingConfig(
            SkipGramConfig(dim=dim, window=window, negatives=negatives, epochs=epochs, batch_size=batch_size, seed=seed),
            WalkConfig(walks_per_node, walk_length, p, q),
            tuple(name.strip() for name in models.split(",") if name.strip()),
        )
        _train(settings, config, sequences, graph, index_kind, evaluate_models, publish, walks)
    except (ValueError, OSError) as exc:
        fail(str(exc))


def _train(settings: Any, config: Any, sequences_path: Path | None, graph_path: Path | None,
           index_kind: str, evaluate_models: bool, publish: bool,
           walks_path: Path | None = None) -> None:  # fmt: skip
    from models.embeddings.inputs import read_graph_parquet, read_sequences_parquet, transition_graph
    from models.evaluation import leave_last_one_out
    from pipelines.training import recall
    from pipelines.training.holdout import read_positives

    split = None
    if sequences_path is not None:
        train_sequences = read_sequences_parquet(sequences_path)
        window = {"source": str(sequences_path)}
    else:
        split = leave_last_one_out(read_positives(settings))
        train_sequences = split.train_sequences()
        window = {"start": str(split.start), "end": str(split.end), "held_out": "last positive per user"}
    edges = read_graph_parquet(graph_path) if graph_path is not None else transition_graph(train_sequences)
    console.print(f"{len(train_sequences):,} sequences, {sum(map(len, train_sequences)):,} items, "
                  f"graph {len(set(edges[0]) | set(edges[1])):,} nodes / {len(edges[0]):,} edges")  # fmt: skip
    walks = recall.read_walks(walks_path, config.models)
    for model, corpus in (walks or {}).items():
        console.print(f"{model}: {len(corpus):,} walks from {walks_path}")
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as bar:
        tasks = {name: bar.add_task(f"train {name}", total=1.0) for name in config.models}
        run = recall.train_recall(train_sequences, config, index_kind, edges, walks,
                                  lambda phase, share: bar.update(tasks[phase], completed=share))  # fmt: skip
    metrics: dict[str, Any] = run.metrics()
    if evaluate_models and split is None:
        console.print(styled(("--eval needs the event-log input (it holds out each user's last positive); skipped", "yellow")))
    elif evaluate_models:
        metrics["offline"] = recall.compare_recall(run, split)
        _evaluation_table(metrics["offline"], len(split.test))
    _summary(run.trained, run.artifact)
    if publish:
        version = recall.publish(settings, run, config.to_dict() | {"index_kind": index_kind}, window, metrics, set_current=True)
        console.print(styled("published recall version ", (version, "bold"), f" to {settings.model_registry_dir} (current)"))


def _evaluation_table(results: dict[str, dict[str, float]], users: int) -> None:
    table = Table(title=f"Leave-last-one-out, full ranking, {users:,} users")
    table.add_column("model")
    for metric in next(iter(results.values())):
        table.add_column(metric, justify="right")
    for name, row in results.items():
        table.add_row(name, *(f"{value:.4f}" for value in row.values()))
    console.print(table)


def _summary(trained: Any, artifact: Any) -> None:
    table = Table(title="Embedding training")
    for column in ("model", "items", "pairs", "pairs/s", "device", "last loss", "index"):
        table.add_column(column)
    for name, stats in trained.stats.items():
        table.add_row(name, f"{len(artifact.embeddings[name].ids):,}", f"{stats.pairs:,}", f"{stats.pairs_per_second:,.0f}",
                      stats.device, f"{stats.loss_per_epoch[-1]:.3f}" if stats.loss_per_epoch else "-", artifact.indexes[name].kind)  # fmt: skip
    console.print(table)


@app.command("ranker")
def ranker(
    samples_path: Annotated[Path, typer.Option("--samples", help="Ranking-samples Parquet file or folder (see models/ranking/samples.py).")],
    model: Annotated[str, typer.Option("--model", help="din, wide_deep or lr.")] = "din",
    state_dir: StateDirOption = None,
    evaluate_models: Annotated[bool, typer.Option("--eval/--no-eval", help="Also train/fit the LR and popularity baselines and print one table.")] = False,
    dense_features: Annotated[str | None, typer.Option(help="Comma-separated dense feature columns (default: every extra numeric column).")] = None,
    max_seq_len: Annotated[int, typer.Option(min=1, help="Behaviour sequence cap.")] = 50,
    embedding_dim: Annotated[int, typer.Option(min=1)] = 16,
    learning_rate: Annotated[float | None, typer.Option(help="Adam learning rate (model default if unset).")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without a better validation AUC before stopping.")] = 2,
    publish: Annotated[bool, typer.Option("--publish/--no-publish", help="Publish to the registry (role ranker).")] = True,
    set_current: Annotated[bool, typer.Option("--set-current/--no-set-current", help="Make the published version current.")] = True,
    seed: int = 0,
) -> None:
    """Train a DIN or Wide&Deep ranker from ranking samples with early stopping on validation AUC,
    print AUC / GAUC / logloss (with --eval: against LR and popularity), and publish the
    SavedModel with its manifest through the model registry."""
    from models.ranking import MODEL_KINDS
    from models.ranking.pipeline import train_ranker
    from models.ranking.trainer import TrainConfig
    from models.registry import ModelRegistry, RegistryError

    if model not in MODEL_KINDS:
        fail(f"--model must be one of {', '.join(MODEL_KINDS)}, got {model!r}")
    settings = load_settings(state_dir)
    params: dict[str, Any] = {} if model == "lr" else {"embedding_dim": embedding_dim}
    if learning_rate is not None:
        params["learning_rate"] = learning_rate
    names = None if dense_features is None else tuple(n.strip() for n in dense_features.split(",") if n.strip())
    try:
        run = train_ranker(
            samples_path, model, dense_features=names, max_seq_len=max_seq_len, model_params=params,
            config=TrainConfig(epochs=epochs, batch_size=batch_size, patience=patience, seed=seed),
            evaluate_baselines=evaluate_models, set_current=set_current,
            registry=ModelRegistry(settings.model_registry_dir) if publish else None,
        )  # fmt: skip
    except (ValueError, OSError, RegistryError) as exc:
        fail(str(exc))
        return
    _ranker_table(run)
    if run.version is not None:
        state = "current" if set_current else "not current"
        console.print(styled("published ranker version ", (run.version, "bold"), f" to {settings.model_registry_dir} ({state})"))


def _ranker_table(run: Any) -> None:
    result = run.result
    table = Table(title=f"Ranking: {run.kind}, best epoch {result.best_epoch}/{len(result.history)}, "
                        f"{result.samples_per_second:,.0f} samples/s on {result.device}")  # fmt: skip
    for column in ("model", "val AUC", "val GAUC", "test AUC", "test GAUC", "test logloss", "test rows"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, splits in run.metrics.items():
        val, test = splits.get("validation", {}), splits.get("test", {})
        cells = [val.get("auc"), val.get("gauc"), test.get("auc"), test.get("gauc"), test.get("logloss")]
        table.add_row(name, *(f"{v:.4f}" if v is not None else "-" for v in cells), f"{int(test.get('rows', 0)):,}")
    console.print(table)


@app.command("run")
def run(
    state_dir: StateDirOption = None,
    resume: Annotated[str | None, typer.Option(help="Run id to resume: its succeeded steps are skipped.")] = None,
    trigger: Annotated[str, typer.Option(help="Recorded as the run's trigger (the scheduler passes 'schedule').")] = "manual",
    run_id: Annotated[str | None, typer.Option(
        "--run-id", help="Id of the new run (default: its start time and a random suffix); the scheduler names its runs.",
    )] = None,
    holds_lock: Annotated[bool, typer.Option("--holds-lock", hidden=True,
                                             help="The caller (the scheduler) holds the training lock.")] = False,
) -> None:
    """Run the training DAG now: compact → attribution → batch views → ranker → embeddings →
    evaluate → gate → promote → notify. Exit 1 when a step fails (the run record says why). It
    takes the schedulers' training lock (on `redis.url`, or the state directory's embedded Redis),
    so it never overwrites the outputs of a scheduled run going on (exit 2 while one holds it)."""
    from feature_store.processes import sigterm_exits
    from pipelines.training.dag import run_training, runs_dir
    from pipelines.training.executor import StepFailed
    from pipelines.training.records import RunStore, new_run_id
    from services.scheduler.lock import TrainingLockHeld

    settings = load_settings(state_dir)
    if run_id is not None and not RUN_ID.fullmatch(run_id):
        fail(f"--run-id {run_id!r}: letters, digits, '_', '.' and '-', at most 128, starting with a letter or digit")
    name = None if resume else run_id or new_run_id()  # named here: its record is shown if it fails
    try:
        # SIGTERM (the scheduler, a pod) records the run failed and resumable, and frees the lock.
        with sigterm_exits(), _training_lock(settings, holds_lock):
            record = run_training(settings, resume, trigger, show_step, name)
    except TrainingLockHeld as exc:
        fail(str(exc))
        return
    except StepFailed as exc:
        console.print(styled(("training run failed", "red"), f": {exc}"))
        _history_table([RunStore(runs_dir(settings)).load(resume or name)])
        raise typer.Exit(code=1) from None
    except (KeyError, ValueError) as exc:
        fail(str(exc))
        return
    show_run(record)


@contextmanager
def _training_lock(settings: Any, holds_lock: bool) -> Iterator[None]:
    """The schedulers' training lock for a manual run, on the configured Redis or the state
    directory's embedded one (which a scheduler on the same state directory shares); nothing for
    the scheduler's own runs (it holds the lock for them)."""
    if holds_lock:
        yield
        return
    from feature_store.redis_client import ConnectionSpec
    from feature_store.redis_server import redis_url
    from services.scheduler.lock import holding, training_lock_key

    with redis_url(settings) as url:
        client = ConnectionSpec.from_settings(settings, url).client()
        try:
            # Lost (a stall past the TTL): SIGTERM, which `sigterm_exits` records as a failed, resumable run.
            lost = lambda: os.kill(os.getpid(), signal.SIGTERM)  # noqa: E731
            with holding(client, training_lock_key(settings.redis.key_prefix), settings.scheduler.lock_ttl_s, lost):
                yield
        finally:
            client.close()


def show_run(record: Any) -> None:
    """A finished run: its row (status, blessed, promoted per role) and its steps."""
    _history_table([record])
    _step_table(record)


def show_step(name: str, event: str, step: Any) -> None:
    """Progress of a DAG run on the console (the executor's `Progress` callback)."""
    if event == "start":
        console.rule(styled((name, "bold")))
    elif event == "skip":
        console.print(f"{name}: succeeded in an earlier attempt; skipped")
    elif event == "retry":
        console.print(styled((f"{name}: {step.error}; retrying", "yellow")))
    else:
        console.print(f"{name}: {step.status} in {step.duration_s:.1f} s")


@app.command("history")
def history(
    state_dir: StateDirOption = None,
    run_id: Annotated[str | None, typer.Option("--run", help="Show one run's steps.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run records as JSON.")] = False,
) -> None:
    """Recorded training runs, newest first (with --run: that run's steps, inputs, outputs and metrics)."""
    import json

    from pipelines.training.dag import history as load_history
    from pipelines.training.dag import runs_dir
    from pipelines.training.records import RunStore

    settings = load_settings(state_dir)
    try:
        records = [RunStore(runs_dir(settings)).load(run_id)] if run_id else load_history(settings, limit)
    except (KeyError, ValueError) as exc:  # unknown or unreadable run
        fail(str(exc))
        return
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in records], indent=2, default=str))
        return
    _history_table(records)
    if run_id:
        _step_table(records[0])


def _history_table(records: list[Any]) -> None:
    """The runs, one a row; under the table a line per run that promoted, with the versions whole
    (an 80-column row cannot hold the run id and two versions beside the other columns)."""
    table = Table(title="training runs")
    add_id_column(table, "run")  # `--run` and `recsys train run --resume` take it
    for column in ("trigger", "status", "started", "seconds", "failed step", "blessed", "promoted"):
        table.add_column(column)
    promotions = []
    for record in records:
        outputs = record.outputs()
        failed = next((s.name for s in record.steps if s.status in ("failed", "timed_out")), "-")
        seconds = sum(s.duration_s or 0.0 for s in record.steps)
        promoted = outputs.get("promoted")
        table.add_row(record.run_id, printable(record.trigger), record.status, record.started_at or "-", f"{seconds:.1f}", failed,
                      _pairs(outputs.get("blessed")), ", ".join(promoted) if isinstance(promoted, dict) and promoted else "-")  # fmt: skip
        if isinstance(promoted, dict) and promoted:
            promotions.append(styled(f"run {record.run_id} promoted {_pairs(promoted)}"))
    console.print(table)
    for line in promotions:
        console.print(line)


def _step_table(record: Any) -> None:
    table = Table(title=f"run {record.run_id}")
    for column in ("step", "status", "attempts", "seconds", "outputs", "error"):
        table.add_column(column)
    for step in record.steps:
        outputs = ", ".join(f"{k}={v}" for k, v in step.outputs.items() if not isinstance(v, (dict, list)))
        table.add_row(step.name, step.status, str(step.attempts),
                      "-" if step.duration_s is None else f"{step.duration_s:.1f}", printable(outputs or "-"),
                      printable(step.error or "-"))  # fmt: skip
    console.print(table)


def _pairs(value: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) and value else "-"
