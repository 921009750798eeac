"""The online learner process (`recsys learn online`): DBGD on live interleaved feedback, or PDGD on
live Plackett–Luce lists, publishing online revisions that every API worker serves
(`services.learner.serving`).

One `step()`:

1. **Kill switch**: when `learner.enabled` or the stored switch (`/v1/admin/learner`) is off, nothing
   is learned or published, and the comparisons read meanwhile are dropped.
2. **Major update**: when the registry's current ranker is not the learner's base (a retrain was
   blessed and promoted), the learner restarts from the new base's own output layer and publishes
   its first revision; the old base's revisions stay in the history.
3. **Guardrail**: when an arm of the experiment named `learner` was stopped by its guardrail
   (`services.experiments.report`: the `online` arm's CTR, the learning share's own traffic, fell
   below the allowed drop against its `control` slice), the learner rolls
   back to the base (PDGD: `learner.sharpness` × the base's layer, the same ranking) once per stop, with the guardrail's reason in the revision and the log (the
   stops handled are kept in Redis, `RevisionStore.handled`, not looked up in the bounded history:
   a restarted learner must not roll back again on a stop whose rollback the history forgot).
4. **Learn (DBGD)**: each finished comparison of the current revision (`services.learner.feedback`; older
   revisions' comparisons are stale and skipped) is one DBGD comparison of the `current` and
   `explore` teams (`services.learner.dbgd.Dbgd`). When a round ends, `w` moved or not, a new
   revision with the new `w̃` (and `w`) is published.
   **Learn (PDGD)**: each finished list with a click, served by a revision of the current base, is
   joined by user and request id to the shown items' features the API kept (`services.learner.shown`; an
   expired or missing one is skipped and counted) and moves `w` by PDGD's step, with `ρ` from the
   scores that drew the list; one revision is published per step that moved `w`.
5. **Rollback (DBGD)**: the `current` team's wins against the `base` team over the last
   `learner.rollback_window` decided comparisons (ties left out), counted while `w` differs from
   the base; when they fall below `learner.rollback_threshold`, a revision with the base's own
   layer is published, and the log says why.
6. **Serving gate** (`services.learner.gate.ServingGate`, with `learner.promote`): every decided
   comparison of `w` against the base (DBGD: the `current` and `base` teams of its lists, while `w`
   differs from the base; PDGD: the team-draft lists of the `current` and `base` teams that the API
   shows on `learner.gate_share` of its learning requests, which PDGD does not learn from) goes to
   the gate; when `w` is promoted or demoted, a revision with the same weights and the new `served`
   flag is published, and the API serves `w` to the traffic outside the learner's arms while it is
   set. A new base or a rollback starts the comparison again with the base served; a restart
   keeps serving what the resumed revision served, judged on new evidence.

The learner resumes from the base's current revision after a restart (its `w`), with a fresh `w̃`,
when that revision is the role's newest and of the same algorithm; otherwise (the registry went
back to an older base, `learner.algorithm` changed) it starts from the base's own layer.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import redis

from feature_store.event_log import MAX_ROLL_TICK_S
from feature_store.online_store import RedisOnlineStore
from feature_store.settings import LearnerSettings, Settings
from models.online_revisions import Revision, RevisionStore
from models.registry import ModelRegistry, RegistryError
from services.experiments.manager import ExperimentManager
from services.experiments.model import LEARNER, Experiment
from services.experiments.report import batch_design_effects, enforce_guardrail
from services.experiments.store import ExperimentStore
from services.learner.base import Presentation
from services.learner.dbgd import Dbgd, sign_test
from services.learner.feedback import Comparison, ComparisonReader, log_lateness
from services.learner.gate import ServingGate
from services.learner.pdgd import Pdgd, starting_weights
from services.learner.serving import TEAMS, idle_reason, label
from services.learner.shown import ShownStore

log = logging.getLogger(__name__)

CURRENT, EXPLORE, BASE = TEAMS
MAX_ARMS = 10_000  # revisions of one base whose lists are learned from: hours of PDGD's publishing
# Finished comparisons kept for the next step when a step fails on Redis (the oldest dropped past
# it: a Redis refusing one command for hours must not grow the learner without bound).
MAX_UNLEARNED = 100_000
# What learning and rollbacks change, put back as it was when they fail (`_all_or_nothing`).
STEP_STATE = ("learner", "gate", "against_base", "arms", "revision", "summary")
HeadLoader = Callable[[str], np.ndarray]  # ranker version -> its output layer [w ; b]
Guardrail = Callable[[], dict[str, str]]  # the `learner` experiment's stopped arms -> why


def stopped_arms(experiments: ExperimentStore, enforce: Callable[[Experiment], Experiment] | None = None) -> Guardrail:
    """The arms of the experiment named `learner` that its guardrail stopped (none without it);
    with `enforce`, the guardrail is applied first (`services.experiments.report.enforce_guardrail`),
    so it acts at every step even when nobody reads the experiment's report."""

    def read() -> dict[str, str]:
        experiment = experiments.all().get(LEARNER)
        if experiment is not None and enforce is not None:
            experiment = enforce(experiment)
        return {} if experiment is None else dict(experiment.stopped_arms)

    return read


def exported_head(registry: ModelRegistry) -> HeadLoader:
    """Reads a published ranker's output layer `[w ; b]` from its SavedModel (one scoring call)."""

    def load(version: str) -> np.ndarray:
        from models.ranking.export import load_exported
        from models.ranking.inference import as_request

        saved_model, spec = load_exported(registry.get("ranker", version).path)
        request = {"user_id": "", "hist_item_ids": [], "hist_categories": [], "item_id": [""], "item_category": [""],
                   **{name: [0.0] for name in spec.dense_features}}
        output = saved_model.score_user(as_request(request))  # type: ignore[attr-defined]
        if "head" not in output:
            raise RegistryError(f"ranker {version} exports no output layer to learn (only DIN artifacts do)")
        return np.asarray(output["head"].numpy(), dtype=np.float64)

    return load


@dataclass
class Summary:
    """What the learner did (logged periodically and at exit)."""

    comparisons: int = 0
    stale: int = 0
    rounds: int = 0
    moves: int = 0
    revisions: int = 0
    rollbacks: int = 0
    guardrail_rollbacks: int = 0
    missing_features: int = 0
    bases: int = 0
    paused_steps: int = 0
    gate_comparisons: int = 0
    promotions: int = 0
    demotions: int = 0


class LearnerProcess:
    """DBGD (or PDGD) over the served lists of the current revisions of the registry's current ranker."""

    def __init__(self, settings: LearnerSettings, store: RevisionStore, registry: ModelRegistry,
                 comparisons: ComparisonReader, head_of: HeadLoader, seed: int = 0, shown: ShownStore | None = None,
                 guardrail: Guardrail = dict) -> None:
        """`shown`: the served lists' features (PDGD needs it); `guardrail`: the stopped arms to roll back on."""
        if settings.algorithm == "pdgd" and shown is None:
            raise ValueError("learner.algorithm=pdgd needs the served lists' features (a ShownStore)")
        self.settings = settings
        self.shown = shown
        self.guardrail = guardrail
        self.store = store
        self.registry = registry
        self.comparisons = comparisons
        self.head_of = head_of
        self.seed = seed
        self.summary = Summary()
        self.base: str | None = None
        self.base_weights = np.zeros(0)
        self.origin = np.zeros(0)  # where the learner starts and rolls back to (PDGD: c × the base's layer)
        self.learner: Dbgd | Pdgd | None = None
        self.revision: Revision | None = None
        # The labels of this base's newest `MAX_ARMS` revisions (PDGD may publish one a second): a list
        # served by an older one is stale.
        self.arms: OrderedDict[str, None] = OrderedDict()
        self.against_base: deque[int] = deque(maxlen=settings.rollback_window)  # 1: current beat base
        self.gate = ServingGate(np.zeros(0), window=settings.gate_window, level=settings.gate_level,
                                min_comparisons=min(settings.gate_min_comparisons, settings.gate_window))
        self.unlearned: list[Comparison] = []  # taken from the log by a step that failed on Redis

    def step(self) -> None:
        """Read the new feedback and learn from it (see the module docstring). A step that fails on
        Redis loses no comparison: Redis is read before the feedback is taken from the log, and the
        comparisons a failed learning step took are learned at the next one (`_learn_whole`)."""
        enabled = self.settings.enabled and self.store.control().enabled
        current = self.registry.current("ranker") if enabled else None
        if current is not None:
            if current.version != self.base:
                self._start_base(current.version)
            self._check_guardrail()
        finished = self.unlearned + self.comparisons.poll()
        self.unlearned = []
        if not enabled:
            self.summary.paused_steps += 1
            return
        if current is None:
            return
        self._learn_whole(finished)

    def _learn_whole(self, finished: list[Comparison]) -> None:
        """Learn from `finished` whole or not at all (`_all_or_nothing`); after a Redis failure the
        comparisons are learned again at the next step. An idle step (none finished) copies nothing."""
        if not finished:
            return
        try:
            with self._all_or_nothing():
                if isinstance(self.learner, Pdgd):
                    self._learn_lists(finished)
                else:
                    for comparison in finished:
                        self._learn(comparison)
        except redis.RedisError:
            self.unlearned = finished[-MAX_UNLEARNED:]
            raise

    @contextmanager
    def _all_or_nothing(self) -> Iterator[None]:
        """When the block fails (a read or a publish), the learner, its gate, counts and revision are
        put back as they were: the API still serves that revision, and a learner ahead of it would
        credit the served heads' wins to heads nobody was shown."""
        saved = {name: copy.deepcopy(getattr(self, name)) for name in STEP_STATE}
        try:
            yield
        except BaseException:
            for name, value in saved.items():
                setattr(self, name, value)
            raise

    def _start_base(self, version: str) -> None:
        """Learn on `version`: resume its current revision when it is the newest of this role and
        of this algorithm (this process restarted), else start from the base's own layer (a new
        base, a registry rollback to an older one, or another algorithm). Switched whole or not at
        all: a failure (Redis) leaves no base, so the next step starts it again."""
        try:
            head = self.head_of(version)
            self.base, self.base_weights = version, head[:-1]
            settings = self.settings
            pdgd = settings.algorithm == "pdgd"
            self.origin = starting_weights(self.base_weights, settings.sharpness) if pdgd else self.base_weights
            newest = self.store.history(limit=1)
            resumed = newest[0] if newest and newest[0].base == version and newest[0].algorithm == settings.algorithm else None
            weights = resumed.weights if resumed is not None else self.origin
            if pdgd:
                self.learner = Pdgd(weights, lr=settings.lr, max_step=settings.max_step)
            else:
                self.learner = Dbgd(weights, alpha=settings.alpha, eta=settings.eta, comparisons=settings.comparisons,
                                    margin=settings.margin, significance=settings.significance, max_step=settings.max_step,
                                    tau=settings.tau, aa=settings.aa,
                                    seed=self._dbgd_seed(newest[0].sequence if newest else 0))
            self.against_base.clear()
            self.gate.reset(self.base_weights, promoted=resumed is not None and resumed.served and settings.promote)
            self.arms = OrderedDict({label(resumed.id): None} if resumed is not None else {})  # its lists are this base's too
            why = f"resumed from {resumed.id}" if resumed is not None else f"base {version} is the registry's current ranker"
            self._publish(resumed.id if resumed is not None else None, why)
        except BaseException:
            self.base, self.learner, self.revision = None, None, None
            raise
        self.summary.bases += 1
        log.info("learning on base %s (%s)", version, why)

    def _dbgd_seed(self, newest_sequence: int) -> int:
        """DBGD's seed for a base started: `seed`, the bases started before and the number of the
        role's newest revision, so a restarted process draws other perturbations than the run
        before (with the CLI's default seed every restart drew the same ones)."""
        mixed = np.random.SeedSequence([self.seed, self.summary.bases, newest_sequence])
        return int(mixed.generate_state(1)[0])

    def _check_guardrail(self) -> None:
        for arm, why in sorted(self.guardrail().items()):
            reason = f"rollback: experiment {LEARNER!r} stopped arm {arm!r} ({why})"
            if self.store.handled(reason):
                continue
            with self._all_or_nothing():
                self._roll_back(reason)
                self.summary.guardrail_rollbacks += 1
            self.store.mark_handled(reason)

    def _learn_lists(self, finished: Sequence[Comparison]) -> None:
        """PDGD: each clicked list of this base's revisions, joined to its shown features by its user and
        request id (and skipped unless the stored list shows the logged items)."""
        assert isinstance(self.learner, Pdgd) and self.revision is not None
        clicked, gated = [], False
        for comparison in finished:
            if comparison.arm not in self.arms:
                self.summary.stale += 1
                continue
            if BASE in comparison.teams:  # the gate's comparison of w and the base: not learned from
                gated |= self._gate(comparison.credit(BASE), comparison.credit(CURRENT))
                continue
            self.summary.comparisons += 1
            if any(comparison.clicked):
                clicked.append(comparison)
        stored = self.shown.read([(c.user_id, c.request_id) for c in clicked]) if clicked else {}  # type: ignore[union-attr]
        moved = 0
        for comparison in clicked:
            shown = stored.get((comparison.user_id, comparison.request_id))
            if shown is None or shown.items != comparison.items or shown.features.shape[1] != len(self.learner.weights):
                self.summary.missing_features += 1
                continue
            self.summary.rounds += 1
            moved += self.learner.learn_logged(np.array(comparison.clicked), shown.features, shown.scores, shown.log_total)
        self.summary.moves += moved
        if moved or gated:
            reasons = ([f"pdgd: w moved by {moved} clicked lists"] if moved else []) + ([self._gate_reason()] if gated else [])
            self._publish(self.revision.id, "; ".join(reasons))

    def _learn(self, comparison: Comparison) -> None:
        assert isinstance(self.learner, Dbgd) and self.revision is not None
        if comparison.arm != label(self.revision.id):
            self.summary.stale += 1
            return
        self.summary.comparisons += 1
        self._track_against_base(comparison)
        if self._rolled_back():
            return
        duel = [(team == EXPLORE, clicked) for team, clicked in zip(comparison.teams, comparison.clicked)
                if team in (CURRENT, EXPLORE)]
        explore_before = self.learner.explore
        moved = self.learner.learn(Presentation(tuple(range(len(duel))), tuple(int(t) for t, _ in duel), np.zeros((0, 0))),
                                   np.array([clicked for _, clicked in duel], dtype=bool))
        if self.learner.explore is not explore_before:  # the round ended: a new w̃ (and maybe w)
            self.summary.rounds += 1
            self.summary.moves += moved
            self._publish(self.revision.id, "explore won: w moved toward w~" if moved else "new explore direction")

    def _track_against_base(self, comparison: Comparison) -> None:
        if np.array_equal(self.revision.weights, self.base_weights):  # type: ignore[union-attr]
            return  # the base against itself: a coin, not a preference
        current, base = comparison.credit(CURRENT), comparison.credit(BASE)
        if current != base:
            self.against_base.append(int(current > base))
        if self._gate(base, current):
            self._publish(self.revision.id, self._gate_reason())  # type: ignore[union-attr]

    def _gate(self, base: int, learned: int) -> bool:
        """One comparison of `w` against the base for the serving gate; whether `w`'s promotion changed."""
        if not self.settings.promote or base == learned:
            return False
        self.summary.gate_comparisons += 1
        before = self.gate.promoted
        if self.gate.record_credit(base, learned) == before:
            return False
        if before:
            self.summary.demotions += 1
        else:
            self.summary.promotions += 1
        return True

    def _gate_reason(self) -> str:
        wins, losses = self.gate.evidence()
        if self.gate.promoted:
            return (f"gate: w served, it won {wins} of the last {wins + losses} decided comparisons against base "
                    f"{self.base} (sign test p = {sign_test(wins, losses):.3g} <= {self.gate.level})")
        return f"gate: base served again, w won {wins} of the last {wins + losses} decided comparisons"

    def _rolled_back(self) -> bool:
        window, threshold = self.settings.rollback_window, self.settings.rollback_threshold
        if len(self.against_base) < window or (share := float(np.mean(self.against_base))) >= threshold:
            return False
        why = (f"rollback: revision {self.revision.id} won {share:.1%} of its last {window} decided comparisons "  # type: ignore[union-attr]
               f"against base {self.base} (threshold {threshold:.1%})")
        self._roll_back(why)
        self.summary.rollbacks += 1
        return True

    def _roll_back(self, why: str) -> None:
        """Back to the base's origin, its comparison against the base started again, and only the
        rollback revision's lists learned from: the rolled-back revisions' lists still in flight
        would move the new `w` again, and their gate comparisons would promote it."""
        assert self.learner is not None and self.revision is not None
        log.warning(why)
        self.learner.reset(self.origin)
        self.against_base.clear()
        self.gate.reset(self.base_weights)
        self.arms.clear()
        self._publish(self.revision.id, why)

    def _publish(self, parent: str | None, reason: str) -> None:
        assert self.learner is not None and self.base is not None
        self.revision = self.store.publish(self.base, self.learner.weights, self.learner.explore, parent, reason,
                                           served=self.gate.promoted, algorithm=self.settings.algorithm)
        self.arms[label(self.revision.id)] = None
        if len(self.arms) > MAX_ARMS:
            self.arms.popitem(last=False)
        self.summary.revisions += 1


def build(settings: Settings, client: redis.Redis, seed: int = 0, redis_url: str | None = None) -> LearnerProcess:
    """The learner process of `settings` over the event log, the registry, the revisions and (PDGD)
    the served lists' features in Redis, rolling back when the `learner` experiment's guardrail
    fires (checked at every step against the attributed counts); a warning when it would compare
    nothing (`idle_reason`). `redis_url`: the server `client` talks to, when `settings` names none
    (an embedded one)."""
    registry = ModelRegistry(settings.model_registry_dir)
    if (idle := idle_reason(settings.learner.share, registry)) is not None:
        log.warning("%s", idle)
    store = RevisionStore(client, settings.redis.key_prefix, history=settings.learner.history)
    window = timedelta(seconds=settings.attribution.window_s)
    lateness = log_lateness(settings.event_log.roll_max_age_s)
    if settings.learner.algorithm == "pdgd" and settings.learner.shown_ttl_s <= (window + lateness).total_seconds():
        raise ValueError(f"learner.shown_ttl_s ({settings.learner.shown_ttl_s:g} s) must be over attribution.window_s plus "
                         f"event_log.roll_max_age_s plus {MAX_ROLL_TICK_S:g} s ({(window + lateness).total_seconds():g} s): "
                         "PDGD learns a list only after that, and its features expire with the TTL")
    feedback = ComparisonReader(settings.event_log_dir, window, datetime.now(timezone.utc) - window - timedelta(hours=1),
                                lateness=lateness)
    shown = ShownStore(client, settings.redis.key_prefix, settings.learner.shown_ttl_s)
    experiments = ExperimentStore(settings.state_dir / "experiments", client, settings.redis.key_prefix)
    manager = ExperimentManager(experiments, registry)
    attribution = RedisOnlineStore.from_settings(settings, redis_url).attribution()
    effects = batch_design_effects(settings.batch_dir)
    guardrail = stopped_arms(experiments, lambda experiment: enforce_guardrail(manager, attribution, experiment, effects))
    return LearnerProcess(settings.learner, store, registry, feedback, exported_head(registry), seed, shown, guardrail)


def run(process: LearnerProcess, stop: threading.Event, interval_s: float, report_every_s: float = 60.0,
        max_steps: int | None = None) -> Summary:
    """`step()` every `interval_s` until `stop` is set (SIGTERM) or `max_steps` ran; logs the summary
    every `report_every_s` and returns it. A failing step (Redis away, a bad artifact) is logged and
    retried at the next interval."""
    steps, reported = 0, time.monotonic()
    while not stop.is_set() and (max_steps is None or steps < max_steps):
        try:
            process.step()
        except Exception:
            log.exception("learner step failed; retrying in %.1f s", interval_s)
        steps += 1
        if time.monotonic() - reported >= report_every_s:
            log.info("learner: base %s, revision %s, %s", process.base,
                     process.revision.id if process.revision else None, asdict(process.summary))
            reported = time.monotonic()
        stop.wait(interval_s)
    return process.summary
