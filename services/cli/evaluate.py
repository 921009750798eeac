"""`recsys evaluate`: the offline pipeline (multi-channel recall -> ranker) on leave-last-one-out,
beside Pop and ItemKNN, with bootstrap confidence intervals over users. Registered as a single
command (`app.command("evaluate")` in `services/cli/__init__.py`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.cli.common import StateDirOption, console, fail, load_settings

def evaluate(
    state_dir: StateDirOption = None,
    protocol: Annotated[str, typer.Option(help="'last': hold out each user's last positive (today's report); 'field': the field's protocol (>= --min-interactions, last item test, second-last validation, full ranking, tuned peers).")] = "last",
    min_interactions: Annotated[int, typer.Option(min=3, help="field protocol: users with fewer interactions are dropped.")] = 5,
    peers: Annotated[str, typer.Option(help="field protocol: tuned peers (comma-separated: Pop, ItemKNN, SR, ALS, GRU4Rec).")] = "Pop,ItemKNN,SR,ALS,GRU4Rec",
    gru_epochs: Annotated[int, typer.Option(min=1, help="field protocol: most GRU4Rec epochs (the best on validation is kept).")] = 30,
    recall_models: Annotated[str, typer.Option(help="Embedding recall channels (comma-separated: item2vec, deepwalk, node2vec; '' for item-CF + popular only).")] = "item2vec",
    rankers: Annotated[str, typer.Option(help="Rankers re-scoring the recall candidates (comma-separated: din, wide_deep, lr).")] = "wide_deep,din",
    recall_depth: Annotated[int, typer.Option(min=1, help="Candidates recalled per user (ranker input).")] = 100,
    positions_per_user: Annotated[int | None, typer.Option(min=1, help="Training positions per user for ranker samples (the last N before each user's validation row; default: every position).")] = None,
    recall_negatives: Annotated[int, typer.Option(min=0, help="Negatives per positive drawn from recall candidates.")] = 4,
    random_negatives: Annotated[int, typer.Option(min=0, help="Uniform random negatives per positive.")] = 2,
    ranker_epochs: Annotated[int, typer.Option(min=1, help="Most ranker epochs (early stopping on validation AUC).")] = 10,
    warm_start: Annotated[bool, typer.Option(help="Start the rankers' item embeddings from the first recall model's vectors.")] = True,
    embedding_epochs: Annotated[int, typer.Option(min=1)] = 5,
    embedding_dim: Annotated[int, typer.Option(min=1)] = 64,
    bootstrap_rounds: Annotated[int, typer.Option(min=10)] = 1000,
    seed: int = 0,
) -> None:
    """Hold out each user's last positive; train recall (embeddings, item-CF, popular) and the
    rankers (on recall-stage and random negatives) on the rest; print HR@10, NDCG@10 and HR@50
    for every model with 95% bootstrap intervals over users, and each model's paired
    difference from ItemKNN."""
    from models.evaluation.end_to_end import SampleConfig
    from models.evaluation.offline_pipeline import EvaluationConfig, run_offline_evaluation

    settings = load_settings(state_dir)
    if protocol not in ("last", "field"):
        fail(f"unknown protocol {protocol!r}: use 'last' or 'field'")
        return
    try:
        config = EvaluationConfig(
            recall_models=_names(recall_models), rankers=_names(rankers),
            samples=SampleConfig(positions_per_user, recall_negatives, random_negatives, recall_depth, seed=seed),
            embedding_dim=embedding_dim, embedding_epochs=embedding_epochs, ranker_epochs=ranker_epochs, warm_start=warm_start,
            bootstrap_rounds=bootstrap_rounds, seed=seed,
        )  # fmt: skip
        if protocol == "field":
            _field(settings, config, min_interactions, _names(peers), gru_epochs, seed)
            return
        split, categories = _load(settings)
        console.print(f"{len(split.train):,} users, {len(split.test):,} with a held-out item, "
                      f"{sum(map(len, split.train.values())):,} training positives")  # fmt: skip
        with _progress() as bar:
            result = run_offline_evaluation(split, categories, config, _reporter(bar))
    except (ValueError, OSError) as exc:
        fail(str(exc))
        return
    _print(result)


def _field(settings: Any, pipeline: Any, min_interactions: int, peers: tuple[str, ...], gru_epochs: int, seed: int) -> None:
    from models.evaluation.protocol import implicit_interactions, protocol_split
    from models.evaluation.protocol_run import ProtocolConfig, run_protocol

    config = ProtocolConfig(peers=peers, gru_epochs=gru_epochs, pipeline=pipeline, bootstrap_rounds=pipeline.bootstrap_rounds,
                            seed=seed, reason_recent=settings.api.reason_recent or None)  # fmt: skip
    events, categories = read_log(settings)
    split = protocol_split(implicit_interactions(events), min_interactions)
    console.print(f"{len(split.test.test):,} users with >= {min_interactions} interactions, {len(split.items):,} items")
    with _progress() as bar:
        result = run_protocol(split, categories, config, _reporter(bar))
    print_protocol(result)


def print_protocol(result: Any) -> None:
    """The protocol's table: chosen parameters, validation NDCG@10, test metrics with CIs."""
    from models.evaluation.protocol import TUNING_METRIC
    from models.evaluation.protocol_run import PROTOCOL_METRICS

    table = Table(title=f"Field protocol, {result.users:,} users, {result.items:,} items; test mean [95% bootstrap CI]")
    for column in ("model", "chosen on validation", f"val {TUNING_METRIC}", *PROTOCOL_METRICS):
        table.add_column(column, justify="left" if column in ("model", "chosen on validation") else "right")
    for name, tuned in result.models.items():
        params = ", ".join(f"{k}={v}" for k, v in tuned.params.items()) or "-"
        cells = [f"{mean:.4f} [{low:.4f}, {high:.4f}]" for mean, low, high in result.summary[name].values()]
        table.add_row(name, params, f"{tuned.validation[TUNING_METRIC].mean():.4f}", *cells)
    console.print(table)


def _reporter(bar: Progress) -> Any:
    tasks: dict[str, Any] = {}

    def report(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done)

    return report


def _names(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


def _load(settings: Any) -> tuple[Any, dict[str, str]]:
    from models.embeddings.inputs import positive_interactions
    from models.evaluation import leave_last_one_out

    events, categories = read_log(settings)
    return leave_last_one_out(positive_interactions(events)), categories


def read_log(settings: Any) -> tuple[list[Any], dict[str, str]]:
    """Every event of the log, and each catalog item's first category."""
    from feature_store.catalog import Catalog
    from feature_store.event_log import LocalEventLog

    if not settings.event_log_dir.is_dir():
        raise ValueError(f"no event log at {settings.event_log_dir}: import events first (recsys data import …)")
    log = LocalEventLog(settings.event_log_dir, settings.event_log)
    try:
        events = list(log.read())
    finally:
        log.close()
    categories: dict[str, str] = {}
    if settings.catalog_dir.is_dir():
        table = Catalog(settings.catalog_dir).items_table(["item_id", "categories"])
        for item, cats in zip(table.column("item_id").to_pylist(), table.column("categories").to_pylist()):
            categories[item] = cats[0] if cats else ""
    return events, categories


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)  # fmt: skip


def _print(result: Any) -> None:
    from models.evaluation.offline_pipeline import METRICS

    table = Table(title=f"Leave-last-one-out, {result.users:,} users; mean [95% bootstrap CI]; Δ vs ItemKNN (paired)")
    table.add_column("model")
    for metric in METRICS:
        table.add_column(metric, justify="right")
    table.add_column("Δ NDCG@10 vs ItemKNN", justify="right")
    for name, row in result.summary.items():
        cells = [f"{mean:.4f} [{low:.4f}, {high:.4f}]" for mean, low, high in row.values()]
        delta = result.diff.get(name, {}).get("NDCG@10")
        cells.append(f"{delta[0]:+.4f} [{delta[1]:+.4f}, {delta[2]:+.4f}]" if delta else "-")
        table.add_row(name, *cells)
    console.print(table)
    if result.sample_counts:
        console.print(f"ranker samples by source: {result.sample_counts}")
    for kind, metrics in result.ranker_validation.items():
        console.print(f"{kind} validation: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
