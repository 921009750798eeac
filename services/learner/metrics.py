"""Prometheus metrics of the learner process, read from its `Summary` at scrape time (one source
of truth: the numbers on /metrics are the ones the progress lines and the exit summary print)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.learner.process import LearnerProcess

HELP = {
    "comparisons": "Interleaved requests with a decided comparison fed to the learner",
    "stale": "Comparisons skipped because they were served by an older revision",
    "rounds": "Learning rounds completed (DBGD: N decided comparisons; PDGD: one clicked list with its features)",
    "moves": "Rounds in which w moved (DBGD: toward w~)",
    "revisions": "Online revisions published",
    "rollbacks": "Automatic rollbacks to the blessed base (DBGD: preference against the base)",
    "guardrail_rollbacks": "Rollbacks to the blessed base because the learner experiment's guardrail stopped an arm",
    "missing_features": "PDGD: clicked lists skipped because their shown features had expired or were never written",
    "bases": "Blessed bases the learner (re)started from",
    "paused_steps": "Steps skipped while the kill switch was off",
    "gate_comparisons": "Decided comparisons of w against its base fed to the serving gate",
    "promotions": "Times the serving gate promoted w to the traffic outside the learner's arms",
    "demotions": "Times the serving gate served the base again after w lost its lead",
}


class LearnerCollector(Collector):
    def __init__(self, process: LearnerProcess) -> None:
        self.process = process

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        summary = self.process.summary
        for field in fields(summary):
            yield CounterMetricFamily(f"recsys_learner_{field.name}", HELP[field.name], value=getattr(summary, field.name))
        # The revision's number, not its id as a label: a label per revision would be a new series
        # per publish (PDGD may publish one a second), which Prometheus keeps for its retention.
        current = GaugeMetricFamily("recsys_learner_revision", "Sequence number n of the revision r<n>-… the learner serves now",
                                    labels=["base"])
        revision = self.process.revision
        if revision is not None:
            current.add_metric([self.process.base or ""], float(revision.sequence))
        yield current
        yield GaugeMetricFamily("recsys_learner_promoted", "1 while w serves the traffic outside the learner's arms",
                                value=1.0 if revision is not None and revision.served else 0.0)


def learner_registry(process: LearnerProcess) -> CollectorRegistry:
    """A registry holding the process's metrics, for `prometheus_client.start_http_server`."""
    registry = CollectorRegistry()
    registry.register(LearnerCollector(process))
    return registry
