"""The one settings object for every process.

Sources, strongest first: constructor arguments, `RECSYS_*` environment variables (nested with
`__`, e.g. `RECSYS_SPARK__MASTER`), the YAML file named by `RECSYS_CONFIG`, then the defaults
below. Unknown keys are rejected. `REDIS_URL` is honoured as an alias of `RECSYS_REDIS__URL`.

It lives in `feature_store` because that is the bottom layer: every other package may import it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)


#: Probabilistic interleaving's largest exponent: 2^-100 ~ 1e-30, the softmax is the ranking itself.
MAX_TAU = 100.0
#: The longest timeout a step or run may have (30 days): a thread's wait past `threading.TIMEOUT_MAX`
#: fails only once the step has started, so "effectively none" is this, not 1e10.
MAX_WAIT_S = 30 * 86400.0


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RedisSettings(_Section):
    url: str | None = Field(default=None, description="Unset: start an embedded redis-server.")
    socket_timeout_s: float = Field(default=0.5, gt=0)
    connect_timeout_s: float = Field(default=0.5, gt=0)
    key_prefix: str = "recsys"


class EventLogSettings(_Section):
    roll_max_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    roll_max_age_s: float = Field(default=60.0, gt=0)
    max_open_files: int = Field(default=32, gt=0)
    fsync: bool = True


class EventSettings(_Section):
    """What an event may claim about itself, checked where events enter (API, `compact`)."""

    max_future_skew_s: float = Field(
        default=900.0, ge=0,
        description="Events more than this ahead of the receiving clock are rejected (clock skew allowance).",
    )


class AttributionSettings(_Section):
    """Outcome attribution (feature_store.attribution; the Flink job and the Spark batch job)."""

    window_s: float = Field(
        default=1800.0, gt=0, description="An outcome is attributed to an impression at most this long before it (event time).",
    )
    recent_outcomes: int = Field(default=1000, gt=0, description="How many attributed outcomes Redis keeps (newest first).")


class CatalogSettings(_Section):
    """Bounds on the free-form parts of catalog entries (item `metadata`, user `attributes`),
    checked before anything is written and when the catalog is synced into Redis."""

    max_metadata_depth: int = Field(default=16, ge=1, le=64, description="Nesting levels of metadata/attributes.")
    max_metadata_bytes: int = Field(default=64 * 1024, gt=0, description="Serialized JSON size of metadata/attributes.")


class SparkSettings(_Section):
    master: str = "local[*]"
    driver_memory: str = "2g"
    shuffle_partitions: int = Field(default=8, gt=0)
    extra_conf: dict[str, str] = Field(default_factory=dict)


class FlinkSettings(_Section):
    parallelism: int = Field(default=1, gt=0)
    checkpoint_interval_ms: int = Field(default=5_000, gt=0)
    checkpoint_dir: Path | None = Field(
        default=None, description="Default: <state_dir>/flink-checkpoints. A path, on a cluster one every Flink process mounts.",
    )
    checkpoint_mode: str = Field(
        default="EXACTLY_ONCE", pattern="^(AT_LEAST_ONCE|EXACTLY_ONCE)$",
        description="AT_LEAST_ONCE also gives exact features: the live sink is idempotent.",
    )
    monitor_interval_ms: int = Field(default=100, gt=0, description="How often the file source lists the event log.")
    bundle_time_ms: int = Field(default=20, gt=0, description="python.fn-execution.bundle.time (Flink default 1000).")
    bundle_size: int = Field(default=100, gt=0, description="python.fn-execution.bundle.size (Flink default 100000).")
    out_of_orderness_ms: int = Field(default=5_000, ge=0, description="Watermark lag behind the largest event time.")
    allowed_lateness_ms: int = Field(default=60 * 60_000, ge=0, description="Events older than watermark minus this are too late.")
    writes_in_flight: int = Field(
        default=1000, gt=0, description="Attribution records the job's Redis writer holds at once; one round trip writes up to this many.",
    )

    @field_validator("checkpoint_dir", mode="before")
    @classmethod
    def _a_path(cls, value: Any) -> Any:
        """A URI (`s3://…`) would become a relative path (`s3:/…`) and checkpoints written where no
        one looks: the job and `--resume` read checkpoints as files."""
        if isinstance(value, str) and "://" in value:
            raise ValueError(f"{value!r} is a URI: give a path (on a cluster, a filesystem every Flink process mounts)")
        return value


class ApiSettings(_Section):
    """The HTTP service. Event replay markers live `feature_store.dedup_ttl_s` and the behaviour
    sequence length is the cap of `user.recent_items` (feature_store.definitions): not set here."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1)
    api_keys: list[SecretStr] = Field(default_factory=list)

    @field_validator("api_keys")
    @classmethod
    def _sendable_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        # A header carries bytes, read back as Latin-1: a key with other characters never matched.
        for index, key in enumerate(keys):
            value = key.get_secret_value()
            if not value or not all(" " < char < "\x7f" for char in value):
                raise ValueError(f"key {index} must be printable ASCII without spaces (what an X-API-Key header carries)")
        return keys

    require_key_for_reads: bool = False
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    max_events_per_request: int = Field(default=1000, gt=0)
    keep_alive_timeout_s: float = Field(
        default=5.0, gt=0, description="An idle keep-alive connection is closed after this long without a request.",
    )
    request_read_timeout_s: float = Field(
        default=20.0, gt=0,
        description="How long a client may take to send a request's headers (from connecting or from its first "
        "byte), and the longest pause within its body; then 408 or a close, so slow clients hold no connection.",
    )
    ranker: str = Field(default="din", pattern="^(din|wide_deep)$", description="Ranker family to serve.")
    recall_candidates: int = Field(default=200, gt=0, le=5000)
    reason_recent: int = Field(
        default=10, ge=0,
        description="A served blended item's reason is the history item, among the user's last this many, whose "
        "removal lowers its blended score the most (0: every history item; each item tried re-scores the history).",
    )
    model_poll_interval_s: float = Field(default=5.0, gt=0, description="Registry CURRENT poll period.")
    model_retry_s: float = Field(default=60.0, gt=0, description="A current version that failed to load is tried again this long after.")
    item_cache_ttl_s: float = Field(default=5.0, ge=0, description="In-process catalog cache TTL (0: off).")
    global_cache_ttl_s: float = Field(default=1.0, ge=0, description="Popular/trending/category lists memo TTL.")
    recommend_deadline_s: float = Field(
        default=1.0, gt=0,
        description="A recommendation not ready by then answers degraded from the last known popular list.",
    )
    inference_threads: int = Field(
        default=1, ge=0,
        description="Threads per worker for TensorFlow (intra/inter-op) and faiss (OpenMP); 0: the libraries' defaults.",
    )
    log_impressions: bool = Field(
        default=True, description="Log every served item as an impression event (requests may turn it off).",
    )
    impression_queue_size: int = Field(
        default=10_000, gt=0,
        description="Served lists waiting for the impression writer; when full, new ones are dropped and counted.",
    )
    impression_drain_timeout_s: float = Field(
        default=5.0, ge=0, description="At shutdown, how long queued impressions may take to reach the event log.",
    )


class BatchSettings(_Section):
    """The Spark batch layer (`pipelines/spark`); unset locations mean the local default under
    `state_dir`. Only Spark reads the event log, so `events_uri` may be any URI Spark's filesystem
    layer reads (hdfs://, s3a://). The batch outputs and the catalog are also read as files by the
    training DAG, the API, the learner and the report, so `output_uri` and `catalog_uri` are paths
    (or file:// URIs) on a filesystem every process mounts: on a cluster a shared volume, or an
    object store mounted as one. Feature windows, caps, the CTR prior and the positive-interaction
    rule (`POSITIVE`) come from `feature_store.definitions`, not from here."""

    output_uri: str | None = Field(default=None, description="Default: <state_dir>/batch. A path or file:// URI.")
    events_uri: str | None = Field(default=None, description="Event log root, any URI Spark reads. Default: <state_dir>/events")
    catalog_uri: str | None = Field(default=None, description="Catalog root. Default: <state_dir>/catalog. A path or file:// URI.")
    session_gap_minutes: float = Field(default=30.0, gt=0)
    negative_sampling_ratio: int = Field(default=4, ge=0, description="Sampled negatives per positive (no impressions).")
    max_seq_len: int = Field(default=50, gt=0)
    validation_fraction: float = Field(default=0.1, ge=0, lt=1)
    test_fraction: float = Field(default=0.1, ge=0, lt=1)
    seed: int = Field(default=17, description="Seed of negative sampling (deterministic per event).")
    walk_models: list[str] = Field(default=["deepwalk", "node2vec"], description="random_walks: deepwalk and/or node2vec.")
    walks_per_node: int = Field(default=10, gt=0, description="random_walks: walks started from each node with out-edges.")
    walk_length: int = Field(default=40, ge=2, description="random_walks: nodes per walk (shorter after a dead end).")
    node2vec_p: float = Field(default=0.5, gt=0, description="random_walks: Node2vec return parameter.")
    node2vec_q: float = Field(default=2.0, gt=0, description="random_walks: Node2vec in-out parameter.")

    @field_validator("output_uri", "catalog_uri")
    @classmethod
    def _read_as_files(cls, value: str | None) -> str | None:
        """Python code reads these with `Path`, which makes `s3a://b/x` the relative path `s3a:/b/x`:
        a nightly run would fail at its ranker step and the report would find no rows."""
        if value is not None and "://" in value and not value.startswith("file://"):
            raise ValueError(f"{value!r}: the training DAG, the API and the learner read this as files: give a path "
                             "or file:// URI on a filesystem every process mounts (only batch.events_uri may be "
                             "any URI Spark reads)")
        return value

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> "BatchSettings":
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError("validation_fraction + test_fraction must be < 1")
        return self


class FeatureStoreSettings(_Section):
    """The Redis online store and the Parquet offline store (docs/feature_store.md)."""

    batch_grace_s: float = Field(default=3600.0, ge=0, description="Keep a replaced batch version this long.")
    staging_max_age_s: float = Field(default=86_400.0, gt=0, description="Delete unfinished publishes after this.")
    dedup_ttl_s: float = Field(default=172_800.0, gt=0, description="Replays within this window are no-ops; older live events are dropped.")
    server_impression_dedup_ttl_s: float = Field(
        default=86_400.0, gt=0,
        description="dedup_ttl_s for the impressions the API logs itself (ids imp-...), when shorter: their replay markers, "
        "most of those kept, live this long; the speed layer counts such an impression only within it (docs/speed_layer.md).",
    )
    write_batch_size: int = Field(default=1000, gt=0, description="Entities or events per pipelined write.")
    offline_dir: Path | None = Field(default=None, description="Default: <state_dir>/offline")


class ExploreSettings(_Section):
    """The explore stage after rank (`services.explore`): which policy picks the shown slate."""

    policy: Literal["greedy", "epsilon_greedy", "ucb1", "thompson", "linucb"] = Field(
        default="greedy", description="greedy: the ranker's top-k; the others explore (services/explore).",
    )
    epsilon: float = Field(default=0.1, ge=0, le=1, description="epsilon_greedy: per-slot exploration probability.")
    prior_strength: float = Field(
        default=10.0, gt=0, description="ucb1, thompson: pseudo-impressions behind the ranker-score prior mean.",
    )
    ucb_c: float = Field(default=1.0, ge=0, description="ucb1: scale of the exploration bonus.")
    thompson_draws: int = Field(
        default=32, gt=0, le=100_000,
        description="thompson: conditional Monte Carlo draws estimating each propensity (unbiased; see services/explore/thompson.py).",
    )
    linucb_alpha: float = Field(default=1.0, ge=0, description="linucb: scale of the confidence bonus.")
    linucb_ridge: float = Field(default=1.0, gt=0, description="linucb: A starts as ridge * I.")
    stats_window: Literal["1h", "24h", "7d"] = Field(default="7d", description="Window of the attributed counts read.")
    stats_cache_s: float = Field(
        default=1.0, ge=0, le=3600,
        description="ucb1, thompson, linucb: seconds a worker reuses an item's statistics (0: read every request; services/explore/stats.py).",
    )
    stats_cache_items: int = Field(
        default=5000, ge=1, description="Most items whose statistics a worker caches, per cache (counts ~0.26 KB each, LinUCB ~4.5 KB at d = 32: d + d(d+1)/2 float64).",
    )
    seed: int | None = Field(
        default=None, description="Tests and simulations: request k of a worker draws from seed [seed, k]; unset: from the request id and the service's salt (a retry draws the same).",
    )
    log_candidates_share: float = Field(
        default=0.0, ge=0, le=1,
        description="Share of requests whose ranked candidates go into their first impression (the input of `recsys experiments ope`).",
    )
    log_candidates_top_n: int = Field(
        default=50, ge=1, le=1000, description="Ranked candidates logged per sampled request (the first n, with their scores).",
    )


class GateSettings(_Section):
    """The quality gate of the training DAG (pipelines/training/gate.py, docs/training.md): a
    candidate is blessed when every metric is at least the blessed version's minus its delta and
    at least its floor, on the held-out newest slice the candidate never trained on."""

    recall_ndcg_at_10_delta: float = Field(default=0.01, ge=0, description="Recall NDCG@10 may drop this much below the blessed one.")
    recall_hr_at_50_delta: float = Field(default=0.02, ge=0, description="Recall HR@50 may drop this much below the blessed one.")
    recall_floor_over_chance: float = Field(
        default=3.0, ge=1, description="Recall floors: this multiple of a random ranking's expected NDCG@10 / HR@50 on the run's held-out window.",
    )
    recall_min_chance_hits: float = Field(
        default=2.0, ge=0, description="A recall candidate is rejected when a random ranking expects fewer HR@50 hits on the held-out window.",
    )
    ranker_auc_delta: float = Field(default=0.005, ge=0, description="Ranker AUC may drop this much below the blessed one.")
    ranker_gauc_delta: float = Field(default=0.01, ge=0, description="Ranker GAUC may drop this much below the blessed one.")
    ranker_auc_floor: float = Field(default=0.55, ge=0, le=1, description="Ranker AUC absolute floor (0.5 is chance).")
    ranker_gauc_floor: float = Field(default=0.52, ge=0, le=1, description="Ranker GAUC absolute floor (0.5 is chance).")


class TrainingSettings(_Section):
    """The scheduled training DAG (pipelines/training, `recsys train run`, `recsys scheduler`)."""

    schedule: str = Field(default="0 3 * * *", description="Cron expression (UTC) of `recsys scheduler`'s runs.")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: str) -> str:
        from feature_store.cron import cron_trigger  # the scheduler's own reading

        cron_trigger(schedule)  # ValueError: a settings error at load, not at 3 a.m.
        return schedule

    step_timeout_s: float = Field(default=3600.0, gt=0, le=MAX_WAIT_S, description="A step still running after this fails the run.")
    step_retries: int = Field(default=1, ge=0, description="Retries of a step that raised (not of one that timed out).")
    retry_backoff_s: float = Field(default=5.0, ge=0, description="Wait before the first retry; doubles per retry.")
    embedding_models: list[Literal["item2vec", "deepwalk", "node2vec"]] = Field(
        default=["item2vec", "deepwalk", "node2vec"], min_length=1, description="Recall embeddings to train.")
    embedding_dim: int = Field(default=64, ge=2)
    embedding_epochs: int = Field(default=5, ge=1)
    walks_per_node: int = Field(default=10, ge=1)
    walk_length: int = Field(default=40, ge=2)
    ranker: Literal["din", "wide_deep"] = Field(default="din", description="Ranker family the DAG trains.")
    ranker_epochs: int = Field(default=10, ge=1)
    ranker_embedding_dim: int = Field(default=16, ge=1)
    ranker_learning_rate: float | None = Field(default=None, gt=0, description="Adam learning rate (unset: the model's default).")
    ranker_batch_size: int = Field(default=256, ge=1)
    ranker_patience: int = Field(default=2, ge=1)
    blend: bool = Field(
        default=True,
        description="Fit the learned recall blend (ItemKNN, sequential rules, GRU4Rec, embeddings) into the recall artifact.",
    )
    blend_neighbours: int = Field(default=100, ge=1, description="Blend: ItemKNN and sequential-rule neighbours kept per item.")
    blend_recent: int = Field(
        default=3, ge=1,
        description="Blend: ItemKNN's and the sequential rules' main window (last n items; last 1, and all for ItemKNN, are "
        "channels too).",
    )
    blend_rules_window: int = Field(
        default=10, ge=1, description="Blend: sequential rules count an item following another up to this many steps later.",
    )
    blend_gru_epochs: int = Field(default=5, ge=1, description="Blend: GRU4Rec training epochs.")
    blend_min_reasons: float = Field(
        default=5.0, ge=0,
        description="Blend: its own order shows the top items re-ordered so fewer share a reason; the penalty and depth "
        "are those of best validation NDCG@10 among the ones reaching this many distinct reasons per top-10 list "
        "(0: the best validation NDCG@10, usually the blend's plain order).",
    )
    seed: int = 0
    notify_urls: list[str] = Field(
        default_factory=list, description="API base URLs told to reload after a promotion (each worker also polls CURRENT).",
    )
    gate: GateSettings = Field(default_factory=GateSettings)


class SchedulerSettings(_Section):
    """`recsys scheduler`: cron ticks run the training DAG under a Redis lock (services/scheduler)."""

    lock_ttl_s: float = Field(default=60.0, gt=0, description="The run lock expires this long after its holder stops renewing it.")
    metrics_port: int = Field(default=9109, ge=0, le=65535, description="Prometheus /metrics port (0: none).")
    run_timeout_s: float = Field(default=6 * 3600.0, gt=0, le=MAX_WAIT_S, description="A whole run is stopped after this long.")
    stop_grace_s: float = Field(default=30.0, ge=0, le=3600, description="A run being stopped gets this long after SIGTERM before SIGKILL.")
    misfire_grace_s: int = Field(
        default=300, ge=1, le=int(MAX_WAIT_S),
        description="How late a tick may run: one due while no scheduler was up runs at start if this recent, one "
                    "fired later is counted missed, and a lock Redis does not answer is retried this long.",
    )


class ExperimentsSettings(_Section):
    """A/B and interleaving experiments (services/experiments, docs/experiments.md)."""

    guardrail_interval_s: float = Field(default=60.0, gt=0, description="How often the API applies every running A/B experiment's guardrail (one worker per interval, under a Redis lock).")


class LearnerSettings(_Section):
    """Online updates of the ranker's final linear layer between retrains (services/learner,
    docs/online_learning.md): `recsys learn online` publishes revisions, every API worker serves them."""

    enabled: bool = Field(default=True, description="Kill switch: false stops updates and serves the base (also `/v1/admin/learner`).")
    share: float = Field(default=0.0, ge=0, le=1, description="Share of users (sticky by user hash) served the interleaved W/W~ list.")
    poll_interval_s: float = Field(default=1.0, gt=0, le=5, description="How often each API worker reads the current revision.")
    algorithm: Literal["dbgd", "pdgd"] = Field(default="dbgd", description="The learner `recsys learn online` runs.")
    alpha: float = Field(default=0.1, gt=0, description="DBGD explore scale: w~ = w + alpha * U(-1, 1) * w (DRN's 0.1; the simulation prefers 1.0: docs/online_learning.md).")
    eta: float = Field(default=0.05, gt=0, description="DBGD step: w <- w + eta (w~ - w) (DRN's 0.05; the simulation prefers 0.015 with alpha 1.0: docs/online_learning.md).")
    comparisons: int = Field(default=1, ge=1, description="DBGD: interleaved requests with a click per round (N).")
    margin: float = Field(default=0.0, ge=-1, lt=1, description="DBGD: explore wins minus current wins per comparison needed to move.")
    significance: float = Field(default=1.0, gt=0, le=1, description="DBGD: move only when a round's explore wins pass a one-sided sign test at this level (ties left out; 1: no test).")
    lr: float = Field(default=0.2, gt=0, description="PDGD learning rate, with `sharpness` 5 (the simulation's preference: docs/online_learning.md).")
    sharpness: float = Field(default=5.0, gt=0, description="PDGD: starts from (and rolls back to) this multiple c of the base's layer: the same ranking, a sharper Plackett-Luce list (softmax of c * w.h); docs/online_learning.md.")
    shown_ttl_s: float = Field(default=2400.0, gt=0, description="PDGD: how long a served list's features stay in Redis for the learner (over attribution.window_s + event_log.roll_max_age_s + 1 s, what the learner waits: `recsys learn online` checks).")
    shown_queue: int = Field(default=1000, ge=1, description="PDGD: served lists an API worker queues for its Redis writer before dropping.")
    max_step: float = Field(default=1.0, gt=0, description="Largest L2 norm of one update of w.")
    tau: float = Field(default=3.0, gt=0, le=MAX_TAU, description="Probabilistic interleaving's rank softmax exponent.")
    depth: int = Field(default=20, ge=1, description="Each team's top `depth` items (k when more are asked for) are interleaved (the learner library's 20).")
    aa: bool = Field(default=False, description="A/A mode: w~ = w (measures chance wins; w never moves).")
    promote: bool = Field(default=True, description="Serve w to the traffic outside the learner's arms while it beats its base in the online comparison (the serving gate; docs/online_learning.md); false: they always get the base.")
    gate_share: float = Field(default=0.3, gt=0, le=1, description="PDGD: share of the learning lists that show the team-draft comparison of the base's and w's top k instead (DBGD compares in its own lists).")
    gate_window: int = Field(default=250, ge=1, description="The serving gate's window: the last M decided comparisons of w against its base.")
    gate_level: float = Field(default=0.05, gt=0, lt=1, description="w is served once its wins over the window pass a one-sided sign test at this level, until it wins no more than it loses.")
    gate_min_comparisons: int = Field(default=50, ge=1, description="No promotion before this many decided comparisons since the last base (at most gate_window; five straight wins already pass the sign test at 0.05).")
    rollback_window: int = Field(default=200, ge=1, description="M: the last M decided comparisons of a revision against its base.")
    rollback_threshold: float = Field(default=0.4, ge=0, le=1, description="Roll back to the base when the revision wins fewer than this share of them.")
    history: int = Field(default=1000, ge=1, description="Revisions kept per role (older ones are deleted).")
    metrics_port: int = Field(default=9110, ge=0, le=65535, description="Prometheus /metrics port of `recsys learn online` (0: none).")


class _RedisUrlAlias(PydanticBaseSettingsSource):
    """`REDIS_URL` (the name compose and Kubernetes files use) as `redis.url`: an environment
    variable, so it beats the YAML file; `RECSYS_REDIS__URL` beats it."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        url = os.environ.get("REDIS_URL")
        return {"redis": {"url": url}} if url else {}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECSYS_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    state_dir: Path = Path(".recsys")
    registry_dir: Path | None = Field(default=None, description="Default: <state_dir>/registry")
    redis: RedisSettings = Field(default_factory=RedisSettings)
    event_log: EventLogSettings = Field(default_factory=EventLogSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    attribution: AttributionSettings = Field(default_factory=AttributionSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    flink: FlinkSettings = Field(default_factory=FlinkSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    feature_store: FeatureStoreSettings = Field(default_factory=FeatureStoreSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    explore: ExploreSettings = Field(default_factory=ExploreSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    learner: LearnerSettings = Field(default_factory=LearnerSettings)
    experiments: ExperimentsSettings = Field(default_factory=ExperimentsSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, _RedisUrlAlias(settings_cls)]
        config_file = os.environ.get("RECSYS_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"RECSYS_CONFIG points at {config_file!r}, which is not a file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @property
    def event_log_dir(self) -> Path:
        return self.state_dir / "events"

    @property
    def catalog_dir(self) -> Path:
        return self.state_dir / "catalog"

    @property
    def model_registry_dir(self) -> Path:
        return self.registry_dir or self.state_dir / "registry"

    @property
    def batch_uri(self) -> str:
        return self.batch.output_uri or str(self.state_dir / "batch")

    @property
    def batch_dir(self) -> Path:
        """The batch outputs as a local path (`batch_uri` is what Spark is given)."""
        return Path(self.batch_uri.removeprefix("file://"))

    @property
    def catalog_source_dir(self) -> Path:
        """The catalog the batch layer reads (`batch.catalog_uri`, else `catalog_dir`), as a local path."""
        return Path(self.batch.catalog_uri.removeprefix("file://")) if self.batch.catalog_uri else self.catalog_dir

    @property
    def offline_store_dir(self) -> Path:
        return self.feature_store.offline_dir or self.state_dir / "offline"

    @property
    def flink_checkpoint_dir(self) -> Path:
        return self.flink.checkpoint_dir or self.state_dir / "flink-checkpoints"
