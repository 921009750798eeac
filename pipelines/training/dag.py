"""Run the training DAG with the settings' retries and timeout, and read the runs it recorded."""

from __future__ import annotations

from pathlib import Path

from feature_store.settings import Settings
from pipelines.training.executor import Progress, RetryPolicy, run_steps
from pipelines.training.records import RunRecord, RunStore
from pipelines.training.steps import training_steps


#: Training settings for a quick local run (`recsys run`, benchmarks/training_dag.py): small
#: embeddings (dim 32, 2 epochs, 5 walks of 20 per node), a DIN of 2 epochs, patience 1, and the
#: blend's GRU4Rec of 2 epochs.
FAST_TRAINING = {"embedding_dim": 32, "embedding_epochs": 2, "walks_per_node": 5, "walk_length": 20,
                 "ranker_epochs": 2, "ranker_patience": 1, "blend_gru_epochs": 2}  # fmt: skip


def fast(settings: Settings) -> Settings:
    """`settings` with `FAST_TRAINING`."""
    return settings.model_copy(update={"training": settings.training.model_copy(update=FAST_TRAINING)})


def runs_dir(settings: Settings) -> Path:
    return settings.state_dir / "training" / "runs"


def run_training(settings: Settings, resume: str | None = None, trigger: str = "manual",
                 progress: Progress | None = None, name: str | None = None) -> RunRecord:  # fmt: skip
    """Run every step now (or resume the run `resume`); raises `StepFailed` when one fails.
    Stops the Spark session the batch steps started (not one the caller already had)."""
    from pyspark import SparkContext

    # Steps run in worker threads, where SparkSession.getActiveSession() (thread-local) sees
    # nothing: the process-wide context tells whether a session existed before the run.
    owned_spark = SparkContext._active_spark_context is None
    policy = RetryPolicy(settings.training.step_retries, settings.training.retry_backoff_s, settings.training.step_timeout_s)
    try:
        return run_steps(training_steps(), settings, RunStore(runs_dir(settings)), policy, resume, trigger, progress, name)
    finally:
        context = SparkContext._active_spark_context
        if owned_spark and context is not None:
            context.stop()


def history(settings: Settings, limit: int | None = None) -> list[RunRecord]:
    """Recorded runs, newest first."""
    return RunStore(runs_dir(settings)).runs(limit)
