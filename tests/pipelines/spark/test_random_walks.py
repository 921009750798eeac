"""The Spark random_walks job on tiny graphs: DeepWalk transitions follow the edge weights,
Node2vec's p/q bias the second step, and `recsys train embeddings --walks` trains on the output."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from typer.testing import CliRunner

from feature_store.settings import Settings
from pipelines.spark.common import BatchPaths
from pipelines.spark.jobs.random_walks import walks_path
from pipelines.spark.runner import run_jobs
from services.cli import app
from tests.pipelines.spark.conftest import batch_settings


def _walk_graph(spark: object, state_dir: Path, edges: list[tuple[str, str, int]], **walks: object) -> Settings:
    settings = batch_settings(state_dir, **walks)
    graph = spark.createDataFrame(edges, "src string, dst string, weight long")  # type: ignore[attr-defined]
    graph.write.parquet(BatchPaths.from_settings(settings).item_graph)
    list(run_jobs(spark, settings, ["random_walks"]))  # type: ignore[arg-type]
    return settings


def _walks(settings: Settings, model: str) -> list[list[str]]:
    table = ds.dataset(walks_path(BatchPaths.from_settings(settings), model), format="parquet").to_table()
    return table.column("item_ids").to_pylist()


def test_deepwalk_transitions_are_proportional_to_edge_weights(spark: object, tmp_path: Path) -> None:
    edges = [("a", "b", 1), ("a", "c", 3), ("b", "a", 1), ("c", "a", 1), ("c", "d", 1)]  # d: a dead end
    settings = _walk_graph(spark, tmp_path, edges, walk_models=["deepwalk"], walks_per_node=300, walk_length=4)

    walks = _walks(settings, "deepwalk")
    transitions = Counter((x, y) for walk in walks for x, y in zip(walk, walk[1:]))
    from_a = transitions["a", "b"] + transitions["a", "c"]
    assert len(walks) == 3 * 300  # one per round and node with out-edges (d has none)
    assert set(transitions) <= {(s, d) for s, d, _ in edges}
    assert abs(transitions["a", "c"] / from_a - 0.75) < 0.05
    assert abs(transitions["c", "d"] / (transitions["c", "a"] + transitions["c", "d"]) - 0.5) < 0.06
    assert all(walk[-1] == "d" or len(walk) == 4 for walk in walks)  # only the dead end cuts a walk short


def test_node2vec_p_and_q_bias_the_step_after_t_to_v(spark: object, tmp_path: Path) -> None:
    # From v, having come from t: back to t (weight 1/p), to x which links to t (1), to y (1/q).
    edges = [("t", "v", 1), ("v", "t", 1), ("v", "x", 1), ("v", "y", 1), ("x", "t", 1), ("y", "v", 1)]
    shares = {}
    for name, p, q in (("biased", 0.25, 4.0), ("uniform", 1.0, 1.0)):
        settings = _walk_graph(spark, tmp_path / name, edges, walk_models=["node2vec"], walks_per_node=400,
                               walk_length=3, node2vec_p=p, node2vec_q=q)  # fmt: skip
        after_tv = Counter(walk[2] for walk in _walks(settings, "node2vec") if walk[:2] == ["t", "v"])
        shares[name] = {node: after_tv[node] / sum(after_tv.values()) for node in "txy"}
    # p=0.25, q=4 gives weights 4 : 1 : 0.25; p = q = 1 gives a third each.
    assert abs(shares["biased"]["t"] - 4 / 5.25) < 0.06
    assert abs(shares["biased"]["y"] - 0.25 / 5.25) < 0.04
    assert all(abs(share - 1 / 3) < 0.08 for share in shares["uniform"].values())


def test_train_embeddings_consumes_the_spark_walks(spark: object, tmp_path: Path) -> None:
    ring = [(f"i{k}", f"i{(k + 1) % 8}", 1) for k in range(8)] + [(f"i{k}", f"i{(k + 3) % 8}", 2) for k in range(8)]
    settings = _walk_graph(spark, tmp_path / "state", ring, walks_per_node=4, walk_length=6)
    sequences = tmp_path / "sequences.parquet"
    pq.write_table(pa.table({"item_ids": [[f"i{k}", f"i{(k + 1) % 8}", f"i{(k + 2) % 8}"] for k in range(8)]}), sequences)

    result = CliRunner().invoke(app, [
        "train", "embeddings", "--state-dir", str(settings.state_dir), "--sequences", str(sequences),
        "--walks", str(Path(settings.batch_uri) / "walks"), "--dim", "8", "--epochs", "1", "--no-publish",
    ])  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "deepwalk: 32 walks" in result.output and "node2vec: 32 walks" in result.output
