"""Guardrails applied on a schedule: every `experiments.guardrail_interval_s`, every running A/B
experiment with a guardrail gets `report.enforce_guardrail` (the report's own rule over the
attributed counts, with the arms' design effects from the batch layer's per-user rows), so a
failing arm is stopped without anyone reading the report.

Each API worker runs a `GuardrailMonitor` thread; a tick acts only when it takes the Redis lock
`<prefix>:experiments:guardrail:lock` (`services.scheduler.lock.RunLock`), which it leaves to
expire after nine tenths of the interval instead of releasing it: however many workers run, the
checks are at least 0.9 intervals apart and at most one interval (plus a check's time), and a
dead worker's ticks are taken over by the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from feature_store.attribution_store import AttributionStore
from feature_store.redis_client import RedisClient
from services.experiments.manager import ExperimentManager
from services.experiments.model import Status
from services.experiments.per_user import DesignEffects
from services.experiments.report import enforce_guardrail
from services.scheduler.lock import RunLock

log = logging.getLogger(__name__)

#: The lock outlives one check by this share of the interval: the next tick of the worker that
#: checked finds it gone, while the other workers' ticks in between find it held.
LOCK_SHARE = 0.9


class GuardrailMonitor:
    """Applies the guardrail of every running A/B experiment every `interval_s`, in one worker."""

    def __init__(self, manager: ExperimentManager, attribution: Callable[[], AttributionStore],
                 effects: DesignEffects, client: RedisClient, key_prefix: str, interval_s: float,
                 on_check: Callable[[], None] = lambda: None,
                 on_stop: Callable[[str, str], None] = lambda experiment, arm: None) -> None:  # fmt: skip
        """`attribution` opens the attribution store for one check, `effects` gives an experiment's
        design effects (`report.batch_design_effects`); `on_check` is called after each check this
        worker made, `on_stop(experiment, arm)` for each arm it stopped."""
        self.manager = manager
        self.attribution = attribution
        self.effects = effects
        self.interval_s = interval_s
        self.on_check = on_check
        self.on_stop = on_stop
        self._lock = RunLock(client, f"{key_prefix}:experiments:guardrail:lock",  # type: ignore[arg-type]  # a cluster client locks alike
                             interval_s * LOCK_SHARE)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="guardrail-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def tick(self) -> list[tuple[str, str]] | None:
        """One scheduled look: None when another worker holds this interval's lock, else the
        (experiment, arm) pairs this check stopped."""
        if not self._lock.acquire():
            return None
        return self.check()

    def check(self) -> list[tuple[str, str]]:
        """Apply every running A/B experiment's guardrail now; the (experiment, arm) pairs stopped."""
        stopped = []
        attribution = self.attribution()
        try:
            for experiment in self.manager.list():
                if experiment.status != Status.RUNNING:
                    continue  # enforce_guardrail itself leaves alone what is not A/B or has no guardrail
                after = enforce_guardrail(self.manager, attribution, experiment, self.effects)
                for arm, why in after.stopped_arms.items():
                    if arm not in experiment.stopped_arms:
                        log.warning("experiment %s: arm %s stopped by its guardrail (%s)", experiment.id, arm, why)
                        self.on_stop(experiment.id, arm)
                        stopped.append((experiment.id, arm))
        finally:
            attribution.close()
        self.on_check()
        return stopped

    def _loop(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # Redis away, a file being written: the next tick tries again
                log.exception("guardrail check failed")
