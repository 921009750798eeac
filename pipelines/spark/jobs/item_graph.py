"""item_graph: a directed, weighted item graph from consecutive items in sessions.

Every pair of consecutive items (a, b) in a session adds 1 to the weight of edge a → b, as in
graph-embedding practice (Wang et al. 2018, "Billion-scale Commodity Embedding for E-commerce
Recommendation in Alibaba"). Sequences already collapse repeats, so there are no self-loops, and
the total edge weight equals the number of consecutive in-session pairs.

Output `item_graph/`: src string, dst string, weight long. It feeds DeepWalk and Node2vec.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from feature_store.settings import Settings
from pipelines.spark.common import BatchPaths, JobSummary, Stopwatch, read_parquet

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

JOB = "item_graph"


def extract(spark: SparkSession, paths: BatchPaths) -> DataFrame:
    return read_parquet(spark, paths.sequences, produced_by="sequences").select("item_ids")


def transform(sequences: DataFrame) -> DataFrame:
    """Edges (src, dst, weight) counted over every session's consecutive pairs."""
    from pyspark.sql import functions as F

    pairs = F.expr(
        "transform(sequence(1, size(item_ids) - 1), i -> named_struct('src', item_ids[i - 1], 'dst', item_ids[i]))"
    )
    return (
        sequences.where(F.size("item_ids") >= 2)
        .select(F.explode(pairs).alias("edge"))
        .groupBy("edge.src", "edge.dst")
        .agg(F.count(F.lit(1)).alias("weight"))
    )


def load(edges: DataFrame, paths: BatchPaths) -> None:
    edges.sortWithinPartitions("src", "dst").write.mode("overwrite").parquet(paths.item_graph)


def run(spark: SparkSession, settings: Settings) -> JobSummary:
    watch = Stopwatch(JOB)
    paths = BatchPaths.from_settings(settings)
    sequences = extract(spark, paths)
    watch.step("counting transitions in %s", paths.sequences)
    load(transform(sequences), paths)
    stats = spark.read.parquet(paths.item_graph).selectExpr(
        "count(*) AS edges", "coalesce(sum(weight), 0) AS weight", "count(DISTINCT src) AS sources"
    ).first()
    return JobSummary(
        job=JOB, rows_in=sequences.count(), rows_out=stats.edges, seconds=watch.elapsed(),
        outputs=[paths.item_graph], details={"total_weight": stats.weight, "source_items": stats.sources},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """spark-submit entry point: `spark-submit pipelines/spark/jobs/item_graph.py`."""
    from pipelines.spark.runner import submit_main

    submit_main(JOB, argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
