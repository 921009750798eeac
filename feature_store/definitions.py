"""The project's features, declared once.

Every feature is one `FeatureDef` in `FEATURES`. The same definitions drive:

- the Spark batch job's output columns: `batch_view_columns(entity)` / `batch_view_ddl(entity)`;
- the live writes (the API's, on every accepted event): `feature_store.live_writes.LiveWriter`
  turns events into Redis updates for every feature `updated_by_stream()`;
- the online read: `RedisOnlineStore.get_features(entity, ids, names)`;
- the training rows: the Spark `ranking_samples` job recomputes the features each row needs as
  of the row's time from the event log (`pipelines.spark.point_in_time`).

Vocabulary:

- `entity`: what a value belongs to (user, item, user×category, global). Entity ids are strings;
  a user×category id is `user_category_id(user_id, category)`.
- `source`: the layer that owns the feature (`batch`, `stream`, `request`). A feature with
  `lambda_merge=True` is written by *both* layers: the batch view holds its value as of the batch
  watermark, the speed layer holds what happened after it, and the read merges them by `kind`.
- `kind`: how the value is computed and merged (see `Kind`).
- `ttl`: how long a live (stream) value survives its last update; batch values live as long as
  their batch-view version (see docs/feature_store.md).
- `default`: returned for an entity with no value.

Batch watermarks must be aligned to `WATERMARK_ALIGNMENT` (an hour): the speed layer buckets its
counts by hour, so "stream count after the watermark" is then exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any, Iterable, Mapping

from feature_store.schemas import EventType

WATERMARK_ALIGNMENT = timedelta(hours=1)
SEQUENCE_SEPARATOR = "\x1f"  # ASCII unit separator: never valid inside an id or category


class Entity(StrEnum):
    USER = "user"
    ITEM = "item"
    USER_CATEGORY = "user_category"
    GLOBAL = "global"


#: Columns that identify an entity in a batch view, training rows and offline tables.
ENTITY_KEYS: dict[Entity, tuple[str, ...]] = {
    Entity.USER: ("user_id",),
    Entity.ITEM: ("item_id",),
    Entity.USER_CATEGORY: ("user_id", "category"),
    Entity.GLOBAL: (),
}
GLOBAL_ID = "_"


def join_key(*parts: str) -> str:
    """Parts joined by `|`, each with `%` and `|` percent-encoded: distinct tuples, distinct keys."""
    return "|".join(part.replace("%", "%25").replace("|", "%7C") for part in parts)


#: The category of an item without one (absent from the catalog, or with no categories) wherever a
#: ranker sees it: training rows, serving requests and the user×category entity it keys. Not the
#: lookups' padding token (""), so it keeps a learned embedding; a real category of that name
#: (ml-100k's genre "unknown") is the same value to a ranker.
UNKNOWN_CATEGORY = "unknown"


def user_category_id(user_id: str, category: str) -> str:
    """The entity id of one (user, category) pair (`join_key`: ("a|b", "c") and ("a", "b|c") differ)."""
    return join_key(user_id, category)


def entity_id(entity: Entity, row: Mapping[str, Any]) -> str:
    """The entity id of a row holding the entity's key columns (`ENTITY_KEYS`)."""
    keys = ENTITY_KEYS[entity]
    if not keys:
        return GLOBAL_ID
    missing = [key for key in keys if row.get(key) in (None, "")]
    if missing:
        raise ValueError(f"{entity} row lacks key column(s) {missing}: {dict(row)!r:.200}")
    if entity is Entity.USER_CATEGORY:
        return user_category_id(str(row["user_id"]), str(row["category"]))
    return str(row[keys[0]])


class DType(StrEnum):
    FLOAT = "float"  # read as float32
    INT = "int"  # read as int64
    STRING = "string"  # read as an object array of str
    VECTOR = "vector"  # read as a (n, dim) float32 matrix
    SEQUENCE = "sequence"  # item-id (or category) sequence, newest/strongest first; object array of lists


class Source(StrEnum):
    BATCH = "batch"
    STREAM = "stream"
    REQUEST = "request"  # supplied by the caller at request time, never stored


class Kind(StrEnum):
    """How a feature is computed, and its merge rule when both layers write it (`lambda_merge`)."""

    LATEST = "latest"  # a value; merged: the fresher source wins (stream if updated after the watermark)
    COUNT = "count"  # a count of events; merged: batch count up to the watermark + stream count after
    SEQUENCE = "sequence"  # items newest first; merged: stream items after the watermark, then batch, deduped, capped
    WINDOW_COUNT = "window_count"  # stream-only count over a sliding `window`, in `bucket`-sized buckets
    TOP_K = "top_k"  # members by count, strongest first (over `window` when set)
    RATIO = "ratio"  # Bayesian-smoothed ratio of two other features of the same entity, at read time


class Member(StrEnum):
    """What a live feature takes from an event: the item id, or the item's categories."""

    ITEM = "item"
    CATEGORY = "category"


@dataclass(frozen=True)
class EventFilter:
    """Which events a count or sequence feature takes in. Spark and the speed layer use the same rule."""

    types: frozenset[EventType]
    min_rating: float | None = None  # ratings count only when value >= this

    def matches(self, event_type: str, value: float | None) -> bool:
        if event_type not in self.types:
            return False
        if event_type == EventType.RATING and self.min_rating is not None:
            return value is not None and value >= self.min_rating
        return True

    def sql_condition(self, type_column: str = "type", value_column: str = "value") -> str:
        """The same rule as a Spark SQL boolean expression over the event log's columns."""
        plain = sorted(t.value for t in self.types if t != EventType.RATING or self.min_rating is None)
        parts = [f"{type_column} IN ({', '.join(repr(t) for t in plain)})"] if plain else []
        if EventType.RATING in self.types and self.min_rating is not None:
            parts.append(f"({type_column} = 'rating' AND {value_column} >= {self.min_rating})")
        return "(" + " OR ".join(parts or ["FALSE"]) + ")"


ALL_EVENTS = EventFilter(frozenset(EventType))
#: The project's one positive-interaction rule: what the batch views, sequences, ranking labels,
#: the speed layer and the API's popularity all call a positive. Ratings count from 3.5, the
#: usual MovieLens practice (4 and 5 stars of 1-5; half-star scales keep 3.5). It is deliberately
#: not a runtime setting: the batch and speed layers must agree on it, or lambda-merged counts
#: would mix two definitions. Jobs take it as a parameter so a test can inject another rule.
MIN_POSITIVE_RATING = 3.5
POSITIVE = EventFilter(
    frozenset({EventType.CLICK, EventType.LIKE, EventType.RATING, EventType.PURCHASE,
               EventType.ADD_TO_CART, EventType.SHARE}),
    min_rating=MIN_POSITIVE_RATING,
)
#: What the seen filter calls an interaction: every event but an impression. A shown item the user
#: did not act on may come back; an item rated low, skipped or clicked never does.
INTERACTIONS = EventFilter(frozenset(EventType) - {EventType.IMPRESSION})
CLICKS = EventFilter(frozenset({EventType.CLICK}))
IMPRESSIONS = EventFilter(frozenset({EventType.IMPRESSION}))

#: Beta prior of every CTR: smoothed = (clicks + alpha) / (impressions + alpha + beta).
CTR_PRIOR_ALPHA = 1.0
CTR_PRIOR_BETA = 20.0


def smoothed_ctr(clicks: Any, impressions: Any) -> Any:
    """Bayesian-smoothed click-through rate (Beta(alpha, beta) prior); works on scalars and numpy arrays."""
    return (clicks + CTR_PRIOR_ALPHA) / (impressions + CTR_PRIOR_ALPHA + CTR_PRIOR_BETA)


@dataclass(frozen=True)
class FeatureDef:
    """One feature. See the module docstring for the vocabulary."""

    entity: Entity
    name: str
    dtype: DType
    source: Source
    kind: Kind = Kind.LATEST
    default: Any = None
    ttl: timedelta | None = None
    description: str = ""
    lambda_merge: bool = False
    events: EventFilter | None = None  # counts, sequences, top-k: which events feed them
    member: Member = Member.ITEM
    window: timedelta | None = None  # batch counts: the look-back; stream counts/top-k: the sliding window
    bucket: timedelta | None = None  # stream counts/top-k: bucket size
    cap: int | None = None  # sequences and top-k: maximum length
    dim: int | None = None  # vectors: dimension
    ratio_of: tuple[str, str] | None = None  # ratios: (numerator, denominator) feature names

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValueError(f"feature {self.qualified_name}: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems = []
        if not self.name.isidentifier():
            problems.append("name must be a Python identifier")
        if self.dtype is DType.VECTOR and not self.dim:
            problems.append("vectors need dim")
        if self.kind in (Kind.SEQUENCE, Kind.TOP_K) and not self.cap:
            problems.append(f"{self.kind} features need cap")
        if self.kind is Kind.WINDOW_COUNT and not (self.window and self.bucket and self.events):
            problems.append("window counts need window, bucket and events")
        if self.kind is Kind.RATIO and not self.ratio_of:
            problems.append("ratios need ratio_of")
        if self.updated_by_stream() and self.ttl is None:
            problems.append("features written by the speed layer need a ttl (bounded memory)")
        if self.lambda_merge and self.kind not in (Kind.COUNT, Kind.SEQUENCE, Kind.LATEST):
            problems.append("lambda_merge is defined for count, sequence and latest features only")
        if self.lambda_merge and self.kind is Kind.COUNT and self.window is not None:
            problems.append("only all-time counts can be lambda-merged")
        return problems

    @property
    def qualified_name(self) -> str:
        return f"{self.entity}.{self.name}"

    def in_batch_view(self) -> bool:
        """True when the Spark batch view carries this feature as a column."""
        return self.source is Source.BATCH or self.lambda_merge

    def updated_by_stream(self) -> bool:
        """True when the speed layer writes this feature from events."""
        return (self.source is Source.STREAM or self.lambda_merge) and self.kind is not Kind.RATIO

    def stream_bucket(self) -> timedelta:
        """Bucket size of a live count (lambda counts use the watermark alignment)."""
        return self.bucket or WATERMARK_ALIGNMENT

    def default_value(self) -> Any:
        if self.default is not None:
            return self.default
        return {DType.FLOAT: 0.0, DType.INT: 0, DType.STRING: "", DType.SEQUENCE: (),
                DType.VECTOR: (0.0,) * (self.dim or 0)}[self.dtype]


@dataclass(frozen=True)
class Column:
    """One column a batch view (or offline table) must have."""

    name: str
    dtype: DType
    dim: int | None = None


class UnknownFeatureError(KeyError):
    """A feature name that is not declared; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class FeatureRegistry:
    """An immutable set of feature definitions, looked up by (entity, name)."""

    features: tuple[FeatureDef, ...]
    _by_key: dict[tuple[Entity, str], FeatureDef] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_key: dict[tuple[Entity, str], FeatureDef] = {}
        for feature in self.features:
            key = (feature.entity, feature.name)
            if key in by_key:
                raise ValueError(f"feature {feature.qualified_name} is declared twice")
            by_key[key] = feature
        for feature in self.features:
            for part in feature.ratio_of or ():
                if (feature.entity, part) not in by_key:
                    raise ValueError(f"{feature.qualified_name} is a ratio of unknown feature {part!r}")
        object.__setattr__(self, "_by_key", by_key)

    def get(self, entity: Entity | str, name: str) -> FeatureDef:
        """The definition of `entity.name`; `UnknownFeatureError` lists the entity's features if absent."""
        entity = Entity(entity)
        try:
            return self._by_key[(entity, name)]
        except KeyError:
            known = ", ".join(sorted(self.names(entity))) or "(none)"
            raise UnknownFeatureError(f"unknown {entity} feature {name!r}; known {entity} features: {known}") from None

    def resolve(self, entity: Entity | str, names: Iterable[str]) -> list[FeatureDef]:
        return [self.get(entity, name) for name in names]

    def names(self, entity: Entity | str) -> list[str]:
        return [f.name for f in self.for_entity(entity)]

    def for_entity(self, entity: Entity | str) -> list[FeatureDef]:
        entity = Entity(entity)
        return [f for f in self.features if f.entity is entity]

    def batch_features(self, entity: Entity | str) -> list[FeatureDef]:
        return [f for f in self.for_entity(entity) if f.in_batch_view()]

    def stream_features(self, entity: Entity | str) -> list[FeatureDef]:
        return [f for f in self.for_entity(entity) if f.updated_by_stream()]

    def batch_view_columns(self, entity: Entity | str) -> list[Column]:
        """Columns a batch view of `entity` must have: its key columns, then one per batch feature."""
        entity = Entity(entity)
        keys = [Column(key, DType.STRING) for key in ENTITY_KEYS[entity]]
        return keys + [Column(f.name, f.dtype, f.dim) for f in self.batch_features(entity)]

    def batch_view_ddl(self, entity: Entity | str) -> str:
        """The batch view's schema as a Spark DDL string (`spark.createDataFrame(rows, ddl)`)."""
        spark_types = {DType.FLOAT: "DOUBLE", DType.INT: "BIGINT", DType.STRING: "STRING",
                       DType.VECTOR: "ARRAY<FLOAT>", DType.SEQUENCE: "ARRAY<STRING>"}
        return ", ".join(f"{c.name} {spark_types[c.dtype]}" for c in self.batch_view_columns(entity))


_H = timedelta(hours=1)
_D = timedelta(days=1)


def _project_features() -> tuple[FeatureDef, ...]:
    item, user, uc, glob = Entity.ITEM, Entity.USER, Entity.USER_CATEGORY, Entity.GLOBAL
    B, S = Source.BATCH, Source.STREAM
    popularity = [
        FeatureDef(item, f"popularity_{label}", DType.INT, B, Kind.COUNT, events=POSITIVE, window=window,
                   description=f"positive events on the item in the {label} before the watermark")
        for label, window in (("1d", _D), ("7d", 7 * _D), ("30d", 30 * _D))
    ]
    return (
        *popularity,
        FeatureDef(item, "popularity_all", DType.INT, B, Kind.COUNT, events=POSITIVE, lambda_merge=True,
                   ttl=7 * _D, description="all-time positive events: batch + speed layer after the watermark"),
        *(
            FeatureDef(item, f"{what}_all", DType.INT, B, Kind.COUNT, events=filt, lambda_merge=True, ttl=7 * _D,
                       description=f"all-time {what}: batch + speed layer after the watermark")
            for what, filt in (("impressions", IMPRESSIONS), ("clicks", CLICKS))
        ),
        # A ratio of lambda-merged counts, so serving sees the CTR as of the request, as training
        # rows do (as of their event time), not as of the last batch run.
        FeatureDef(item, "ctr", DType.FLOAT, S, Kind.RATIO, ratio_of=("clicks_all", "impressions_all"),
                   default=smoothed_ctr(0, 0), description="all-time smoothed CTR (batch + live counts)"),
        FeatureDef(item, "primary_category", DType.STRING, B, description="the item's first category"),
        FeatureDef(item, "categories", DType.SEQUENCE, B, cap=64, description="the item's categories"),
        FeatureDef(item, "embedding", DType.VECTOR, B, dim=32,
                   description="LinUCB's item context: the categories hashed into 32 buckets, unit length"),
        *(
            FeatureDef(item, f"{what}_{label}", DType.INT, S, Kind.WINDOW_COUNT, events=filt, window=window,
                       bucket=bucket, ttl=window + bucket, description=f"{what} in the last {label} (sliding)")
            for what, filt in (("impressions", IMPRESSIONS), ("clicks", CLICKS))
            for label, window, bucket in (("1h", _H, timedelta(minutes=5)), ("24h", _D, _H))
        ),
        FeatureDef(item, "ctr_1h", DType.FLOAT, S, Kind.RATIO, ratio_of=("clicks_1h", "impressions_1h"),
                   default=smoothed_ctr(0, 0), description="smoothed CTR over the last hour"),
        FeatureDef(item, "ctr_24h", DType.FLOAT, S, Kind.RATIO, ratio_of=("clicks_24h", "impressions_24h"),
                   default=smoothed_ctr(0, 0), description="smoothed CTR over the last 24 hours"),
        FeatureDef(user, "event_count", DType.INT, B, Kind.COUNT, events=ALL_EVENTS, lambda_merge=True,
                   ttl=7 * _D, description="all-time events of the user (batch + speed layer)"),
        FeatureDef(user, "positive_count", DType.INT, B, Kind.COUNT, events=POSITIVE, lambda_merge=True,
                   ttl=7 * _D, description="all-time positive events of the user (batch + speed layer)"),
        FeatureDef(user, "top_categories", DType.SEQUENCE, B, Kind.TOP_K, events=POSITIVE,
                   member=Member.CATEGORY, cap=5, description="categories of the user's positives, by count"),
        FeatureDef(user, "history", DType.SEQUENCE, B, Kind.SEQUENCE, events=POSITIVE, cap=200,
                   description="positively-rated items, newest first, as of the watermark"),
        FeatureDef(user, "recent_items", DType.SEQUENCE, S, Kind.SEQUENCE, events=POSITIVE, cap=50,
                   lambda_merge=True, ttl=30 * _D,
                   description="last-N positive items, newest first (the DIN behaviour sequence)"),
        FeatureDef(user, "seen", DType.SEQUENCE, S, Kind.SEQUENCE, events=INTERACTIONS, cap=500,
                   lambda_merge=True, ttl=30 * _D,
                   description="last-N items the user acted on in any way (any rating, skips; not impressions), "
                   "newest first: the seen filter's items beside the positives"),
        FeatureDef(user, "last_category", DType.STRING, S, Kind.LATEST, events=POSITIVE, member=Member.CATEGORY,
                   lambda_merge=True, ttl=30 * _D, description="primary category of the last positive item"),
        FeatureDef(user, "recent_categories", DType.SEQUENCE, S, Kind.TOP_K, events=POSITIVE,
                   member=Member.CATEGORY, cap=20, ttl=7 * _D,
                   description="categories of positives while active (7-day TTL), by count"),
        FeatureDef(uc, "affinity", DType.FLOAT, B, description="share of the user's positives in the category"),
        FeatureDef(glob, "popular", DType.SEQUENCE, B, Kind.TOP_K, events=POSITIVE, cap=500,
                   description="top items by all-time positive events before the watermark (the serving "
                   "popular list is this ∪ trending, scored by the merged item.popularity_all)"),
        FeatureDef(glob, "trending", DType.SEQUENCE, S, Kind.TOP_K, events=POSITIVE, window=6 * _H,
                   bucket=_H, cap=100, ttl=7 * _H, description="top items by positive events in the last 6h"),
    )


#: The project's features: the one place a feature is spelled.
FEATURES = FeatureRegistry(_project_features())
