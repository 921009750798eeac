"""Clicks and impressions per user of each A/B arm, from the batch layer's attributed impressions
(`recsys batch attribution`): the units the experiment randomised, for the user-level test, the
sample-ratio test and the guardrail's design effects."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from feature_store.attribution import BUCKET_MS
from services.experiments import analysis
from services.experiments.model import Experiment
from services.experiments.serving import qualified_arm

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

CLICK = "click"
#: The marker Spark writes last into an output it overwrote: while it stands, the rows are the same.
SUCCESS = "_SUCCESS"

PerUser = dict[str, tuple[np.ndarray, np.ndarray]]
#: An experiment's design effect per arm (`design_effects` of its current rows).
DesignEffects = Callable[[Experiment], dict[str, float]]


def counted_since_ms(experiment: Experiment) -> int:
    """Where an experiment's counts start, in epoch ms: the hour bucket it was created in (the
    attribution store counts per hour). Rows labelled with its id before then are not its own: the
    online learner labels its impressions before its experiment exists."""
    since = int(experiment.created_at.timestamp() * 1000)
    return since - since % BUCKET_MS


def experiment_rows(path: Path, experiment: Experiment, columns: Sequence[str],
                    optional: Sequence[str] = ()) -> pa.Table | None:
    """`columns` and those of `optional` the table has, of the experiment's attributed impressions
    at `path` since `counted_since_ms`, filtered by Arrow; None where there are no rows to read."""
    if not path.exists():
        return None
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    dataset = ds.dataset(path, format="parquet", partitioning="hive")
    names = dataset.schema.names
    if not {*columns, "experiment", "ts"} <= set(names):
        return None  # an attribution of a log without impressions writes no file, only `_SUCCESS`
    since = pa.scalar(counted_since_ms(experiment), pa.timestamp("ms", tz="UTC")).cast(dataset.schema.field("ts").type)
    return dataset.to_table(columns=[*columns, *(name for name in optional if name in names)],
                            filter=(pc.field("experiment") == experiment.id) & (pc.field("ts") >= since))


def per_user_counts(path: Path, experiment: Experiment) -> PerUser:
    """arm -> (clicks per user, impressions per user) from the attributed impressions at `path`,
    summed by Arrow (an experiment's rows never become Python objects: the API reads them)."""
    table = experiment_rows(path, experiment, ["user_id", "arm", CLICK])
    if table is None:
        return {}
    import pyarrow.compute as pc

    table = table.set_column(2, CLICK, pc.fill_null(table[CLICK].cast("int64"), 0))
    sums = table.group_by(["arm", "user_id"]).aggregate([(CLICK, "sum"), (CLICK, "count")])
    prefix = qualified_arm(experiment.id, "")
    out = {}
    for arm in experiment.arms:
        rows = sums.filter(pc.equal(sums["arm"], prefix + arm.name))
        if rows.num_rows:
            out[arm.name] = (rows[f"{CLICK}_sum"].to_numpy().astype(float), rows[f"{CLICK}_count"].to_numpy().astype(float))
    return out


def design_effects(per_user: PerUser, experiment: Experiment) -> dict[str, float]:
    """Each arm's design effect from its users (`analysis.design_effect`), or
    `analysis.DEFAULT_DESIGN_EFFECT` where they are too few or there are no rows yet."""
    effects = {}
    for arm in experiment.arms:
        effect = analysis.design_effect(*per_user[arm.name]) if arm.name in per_user else math.nan
        effects[arm.name] = effect if math.isfinite(effect) else analysis.DEFAULT_DESIGN_EFFECT
    return effects


class CachedDesignEffects:
    """`design_effects` of the rows at `path`, read again only once Spark rewrote them (a new
    `_SUCCESS`): the guardrail asks every interval and the learner every step, the rows change
    once per batch run. Rows without the marker (written by hand) are read on every call. Rows that
    cannot be read give the default effects (logged): the guardrail and the learner go on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._marker: int | None = None
        self._cache: dict[str, dict[str, float]] = {}

    def __call__(self, experiment: Experiment) -> dict[str, float]:
        try:
            marker: int | None = (self.path / SUCCESS).stat().st_mtime_ns
        except OSError:
            marker = None
        if marker is None or marker != self._marker:
            self._cache.clear()
            self._marker = marker
        key = f"{experiment.id}|{','.join(arm.name for arm in experiment.arms)}"
        if marker is None or key not in self._cache:
            self._cache[key] = design_effects(self._rows(experiment), experiment)
        return self._cache[key]

    def _rows(self, experiment: Experiment) -> PerUser:
        try:
            return per_user_counts(self.path, experiment)
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            log.warning("per-user rows of experiment %s unreadable under %s (%r): default design effects",
                        experiment.id, self.path, error)
            return {}
