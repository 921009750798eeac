"""random_walks: DeepWalk and Node2vec walks over the item graph, computed by Spark.

The graph is never collected to the driver. Each node's out-edges are one row (src, its
array of (dst, weight)); every step joins the walker frontier (walk_id, prev, cur) with the row
of `cur` and picks the next node inside that row by an exponential race: each candidate x gets
the key ``-ln(u_x) / w_x`` with u_x uniform, and the smallest key wins with probability
``w_x / Σ w`` (so no cumulative sums, and no per-edge rows). The uniforms come from hashing
(seed, walk, step, candidate), so a recomputed partition draws the same walk.

DeepWalk (Perozzi et al. 2014) uses the edge weights as they are. Node2vec (Grover & Leskovec
2016) multiplies them by its second-order bias, given the previous node t: 1/p to go back to t,
1 for a candidate linked to t (an edge candidate → t, as in `models.embeddings.walks`), 1/q
otherwise; the links come from a second join of the frontier with t's in-neighbour row.

Input `item_graph/` (src, dst, weight). Output `walks/<model>/` (walk_id string, item_ids
list<string>), one walk per (round, start node) for every node with out-edges; a walk ends early
at a node without out-edges, and walks shorter than two items are dropped.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from feature_store.settings import Settings
from pipelines.spark.common import BatchJobError, BatchPaths, JobSummary, Stopwatch, read_parquet

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

JOB = "random_walks"
MODELS = ("deepwalk", "node2vec")
_TWO_POW_53 = 9007199254740992


def walks_path(paths: BatchPaths, model: str) -> str:
    return paths.output(f"walks/{model}")


def extract(spark: SparkSession, paths: BatchPaths) -> DataFrame:
    from pyspark.sql import functions as F

    edges = read_parquet(spark, paths.item_graph, produced_by="item_graph")
    return edges.select(F.col("src").cast("string"), F.col("dst").cast("string"), F.col("weight").cast("double")).where(
        "src IS NOT NULL AND dst IS NOT NULL AND weight > 0"
    )


def out_rows(edges: DataFrame) -> DataFrame:
    """One row per node with out-edges: src, out array<struct<dst, weight>>."""
    from pyspark.sql import functions as F

    return edges.groupBy("src").agg(F.collect_list(F.struct("dst", "weight")).alias("out"))


def next_step(frontier: DataFrame, nodes: DataFrame, in_links: DataFrame | None, step: int,
              p: float, q: float, seed: int) -> DataFrame:  # fmt: skip
    """The frontier one step on (walk_id, prev, cur); walkers at a node without out-edges drop."""
    from pyspark.sql import functions as F

    joined = frontier.join(nodes, frontier["cur"] == nodes["src"])
    if in_links is None:  # DeepWalk, or Node2vec's first step (no previous node yet)
        bias = "1.0D"
    else:
        joined = joined.join(in_links, joined["prev"] == in_links["linked_to"], "left")
        bias = (f"CASE WHEN e.dst = prev THEN {1.0 / p}D "
                f"WHEN array_contains(coalesce(in_src, array()), e.dst) THEN 1.0D ELSE {1.0 / q}D END")  # fmt: skip
    uniform = f"(pmod(xxhash64({seed}, walk_id, {step}, e.dst), {_TWO_POW_53}) + 0.5D) / {float(_TWO_POW_53)}D"
    race = f"array_min(transform(out, e -> named_struct('key', -ln({uniform}) / (e.weight * {bias}), 'dst', e.dst))).dst"
    return joined.select("walk_id", F.col("cur").alias("prev"), F.expr(race).alias("cur"))


def walk(edges: DataFrame, model: str, walks_per_node: int, walk_length: int, p: float, q: float, seed: int) -> DataFrame:
    """All walks of `model` (walk_id, item_ids); each step's frontier is checkpointed, which cuts
    the query plan so step 40 does not re-plan the 39 before it."""
    from pyspark.sql import functions as F

    spark = edges.sparkSession
    nodes = out_rows(edges).cache()
    in_links = None
    if model == "node2vec":
        in_links = edges.groupBy(F.col("dst").alias("linked_to")).agg(F.collect_set("src").alias("in_src")).cache()
    rounds = spark.range(walks_per_node).withColumnRenamed("id", "round")
    frontier = nodes.select("src").crossJoin(rounds).select(
        F.concat_ws(":", F.col("round").cast("string"), "src").alias("walk_id"), F.lit(None).cast("string").alias("prev"),
        F.col("src").alias("cur"),
    ).localCheckpoint()  # fmt: skip
    visited = [frontier.select("walk_id", F.lit(0).alias("step"), F.col("cur").alias("item"))]
    for step in range(1, walk_length):
        links = in_links if step >= 2 else None
        frontier = next_step(frontier, nodes, links, step, p, q, seed).localCheckpoint()
        visited.append(frontier.select("walk_id", F.lit(step).alias("step"), F.col("cur").alias("item")))
    steps = visited[0]
    for more in visited[1:]:
        steps = steps.unionByName(more)
    return (
        steps.groupBy("walk_id")
        .agg(F.sort_array(F.collect_list(F.struct("step", "item"))).alias("path"))
        .where(F.size("path") >= 2)
        .select("walk_id", F.expr("transform(path, s -> s.item)").alias("item_ids"))
    )


def run(spark: SparkSession, settings: Settings) -> JobSummary:
    from pyspark.sql import functions as F

    batch = settings.batch
    unknown = set(batch.walk_models) - set(MODELS)
    if unknown or not batch.walk_models:
        raise BatchJobError(f"batch.walk_models {batch.walk_models}: use one or both of {', '.join(MODELS)}")
    watch = Stopwatch(JOB)
    paths = BatchPaths.from_settings(settings)
    edges = extract(spark, paths).cache()
    edge_count = edges.count()
    details: dict[str, object] = {}
    outputs = []
    for model in batch.walk_models:
        p, q = (batch.node2vec_p, batch.node2vec_q) if model == "node2vec" else (1.0, 1.0)
        watch.step("%s: %d walks/node of length %d (p=%s, q=%s) over %d edges", model, batch.walks_per_node,
                   batch.walk_length, p, q, edge_count)  # fmt: skip
        walks = walk(edges, model, batch.walks_per_node, batch.walk_length, p, q, batch.seed)
        walks.write.mode("overwrite").parquet(walks_path(paths, model))
        stats = spark.read.parquet(walks_path(paths, model)).select(
            F.count(F.lit(1)).alias("walks"), F.coalesce(F.avg(F.size("item_ids")), F.lit(0.0)).alias("mean_length")
        ).first()
        details[f"{model}_walks"] = stats.walks
        details[f"{model}_mean_length"] = round(float(stats.mean_length), 2)
        outputs.append(walks_path(paths, model))
    edges.unpersist()
    return JobSummary(
        job=JOB, rows_in=edge_count, rows_out=sum(int(details[f"{m}_walks"]) for m in batch.walk_models),  # type: ignore[call-overload]
        seconds=watch.elapsed(), outputs=outputs, details=details,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """spark-submit entry point: `spark-submit pipelines/spark/jobs/random_walks.py`."""
    from pipelines.spark.runner import submit_main

    submit_main(JOB, argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
