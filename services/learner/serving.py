"""Serving online revisions in an API worker: poll the current revision, interleave W, W̃ and the base.

Each worker polls `RevisionStore.poll(base)` every `learner.poll_interval_s` for the ranker version
it serves (the revision's blessed base) and swaps its `LiveRevision` by one reference assignment,
so a request keeps the revision it started with. A user in the learning share (`learner.share`,
sticky: `unit_hash("learner", user)` as experiments assign arms) gets the probabilistic
interleaving (`services.experiments.interleaving.probabilistic`, exact propensities) of the top
`learner.depth` of three lists: the current weights `w`'s (team `current`), the explore weights
`w̃`'s (team `explore`, when the revision has them) and the base's own output layer's (team `base`:
the credit the rollback compares against). The ranker's penultimate features `h(u, i)` are computed once per request (one model
call) and each team's scores are one dot product `σ(w_team · h + b)` over them.

**The serving gate** (`learner.promote`, `services.learner.gate`): while the current revision is
`served` (its `w` beat the base in the learner's online comparison) and `learner.share` > 0, every user outside both arms
is ranked by `w` (PDGD's divided by `learner.sharpness`: the same order, on the base's score scale,
which the explore stage's priors read), logged as ranker `<base>@<revision id>`; the explore stage
is the configured one. PDGD's comparison: on `learner.gate_share` of the learning requests, the list is the team-draft interleaving of the base's and `w`'s top k (teams `base` and
`current`), with its propensities; when both top k are the same (nothing to compare) or k < 2,
the request gets PDGD's own list instead.

With `learner.algorithm=pdgd` the share gets one list instead, drawn from the Plackett–Luce model of
W's scores `w · h` over every ranked candidate (team `current`, each slot's exact propensity given
the slots above), and the shown items' features go to Redis by user and request id off the request path
(`services.learner.shown`): what PDGD's update needs and the event log does not hold.

The learning share and its control are the two arms of the experiment `learner`
(`services.experiments.model.LEARNER`), so its A/B report and guardrail count the learner's own
traffic: the share's lists carry arm `online` (impression arm `learner:online`), and a same-sized
sticky slice of users (`share ≤ unit_hash("learner", user) < share + min(share, 1 − share)`) is
served plainly under arm `control`; both only while the learner serves (same conditions below), so
the arms stay comparable. The revision id is in the policy's explore label (`…;explore=learner:<revision
id>`), where the learner process finds it (and the teams) in the event log. Nothing is served or
labelled when the kill switch is off (the setting or `/v1/admin/learner`), when no revision exists
for the served base (or it won't parse, or a revision of another base is newer: the learner left
this base), or when the served ranker exports no penultimate features or is not what is
served (`serves_ranker`: the recall artifact's blend serves its own order when validation chose it
over the ranker; the learner would update a ranker nobody sees, and the `learner` experiment would
compare the ranker's lists against the blend's).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import redis
from scipy.special import expit, logsumexp

from feature_store.settings import LearnerSettings
from models.online_revisions import Control, Poll, Revision, RevisionStore
from models.registry import ModelRegistry, RegistryError
from models.retrieval.order_choice import OrderChoice
from services.experiments.assignment import unit_hash
from services.experiments.interleaving import probabilistic, team_draft
from services.experiments.model import LEARNER, LEARNER_ARMS
from services.experiments.serving import Served
from services.explore.randomness import RequestGenerators, fresh_generator
from services.learner.pdgd import sample_list
from services.learner.shown import ShownList, ShownWriter
from services.recommend.pipeline import ModelBundle, ServingPlan
from services.recommend.types import Candidate, Merged, RankOutput, UserContext

if TYPE_CHECKING:  # the adapters load lazily, with the first model (`registry_models`)
    from services.recommend.model_adapters import Penultimate

log = logging.getLogger(__name__)

CONTROL, ONLINE = LEARNER_ARMS
TEAMS = ("current", "explore", "base")


def learner_arm(user_id: str, share: float) -> str | None:
    """The user's arm of the `learner` experiment (sticky across workers and restarts): `online` for
    the learning share, `control` for the next slice of the same size (what is left when the share is
    over one half), None for everyone else."""
    point = unit_hash(LEARNER, user_id)
    return ONLINE if point < share else CONTROL if point < share + min(share, 1 - share) else None


def in_learning_share(user_id: str, share: float) -> bool:
    """Whether a user is served the learner's list (the `online` arm)."""
    return learner_arm(user_id, share) == ONLINE


def serves_ranker(bundle: ModelBundle, base: str | None) -> bool:
    """Whether `bundle` serves ranker version `base` by a ranker with penultimate features (what the
    learner updates): not another version, not a ranker without them, and not when the recall
    artifact's blend serves its own order because validation chose it over this ranker."""
    if base is None or base != bundle.versions.get("ranker") or not getattr(bundle.ranker, "has_penultimate", False):
        return False
    return bundle.blend is None or bundle.blend.serves_ranker(base)


def idle_reason(share: float, registry: ModelRegistry) -> str | None:
    """Why a learner started now would compare nothing, with the setting to change; None when
    nothing says so yet. Read from the registry without loading a model: the learning share is
    0 (the default), or the current recall artifact's blend serves its own order rather than the
    current ranker (`serves_ranker`; `training.blend` is on by default and validation often
    chooses the blend). A bad registry entry is left to the learner's steps to report."""
    if share <= 0:
        return ("learner.share is 0: no user is served the learning lists, so comparisons stays 0; "
                "set RECSYS_LEARNER__SHARE (e.g. 0.05) for the API and the learner")
    try:
        ranker, recall = registry.current_name("ranker"), registry.current("recall")
        blend = None if recall is None else recall.manifest.get("blend")
        if ranker is None or recall is None or not isinstance(blend, dict):
            return None  # no blend: the ranker orders what is served
        order = blend.get("order")  # None: a blend fitted without a ranker to compare serves its own order
        if order is not None and OrderChoice.from_dict(order).serves_ranker(ranker):
            return None
    except (RegistryError, ValueError, TypeError):
        return None
    return (f"recall version {recall.version} serves its blend's own order, not ranker {ranker} (validation chose "
            "the blend): the API serves no list of the ranker the learner updates, so comparisons stays 0; "
            "retrain with RECSYS_TRAINING__BLEND=false to serve the ranker (docs/online_learning.md)")


def label(revision_id: str) -> str:
    """The explore label of a list served for revision `revision_id` (before the arms, also its arm)."""
    return f"{LEARNER}:{revision_id}"


@dataclass(frozen=True)
class LiveRevision:
    """What a worker serves now: the base version, its current revision (or None) and the kill switch."""

    base: str | None
    revision: Revision | None
    control: Control


class SharedPenultimate:
    """One request's penultimate features, computed by the first team's ranker and reused by the
    others (and by PDGD's merge).

    Safe without a lock, and it would stay correct if the pipeline ranked the teams on several
    threads: an instance lives for one request (`LearnerServing.plan` makes it), and every team
    of a request ranks copies of the same candidates in the same order, so every call has the same
    key and any value a call returns is that key's; concurrent calls could at worst compute it
    twice. A call with other candidates recomputes (the key is the candidate ids)."""

    def __init__(self, ranker: object) -> None:
        self.ranker = ranker
        self._key: tuple[str, ...] | None = None
        self._value: Penultimate | None = None

    def of(self, user: UserContext, candidates: Sequence[Candidate]) -> Penultimate:
        key = tuple(c.item_id for c in candidates)
        if self._value is None or key != self._key:
            self._value = self.ranker.penultimate(user, candidates)  # type: ignore[attr-defined]
            self._key = key
        return self._value

    @property
    def cached(self) -> tuple[tuple[str, ...], Penultimate] | None:
        """The candidate ids and features computed last (None before the first `of`)."""
        return None if self._value is None or self._key is None else (self._key, self._value)


class HeadRanker:
    """A `Ranker` scoring `σ(w · h(u, i) + b)` with given weights `w` (None: the base's own) over
    shared penultimate features."""

    def __init__(self, shared: SharedPenultimate, weights: np.ndarray | None, name: str, attention: bool) -> None:
        self.shared = shared
        self.weights = weights
        self.name = name
        self.attention = attention  # the first team's is enough: the pipeline keeps an item's first reason

    def rank(self, user: UserContext, candidates: Sequence[Candidate]) -> RankOutput:
        features = self.shared.of(user, candidates)
        head, bias = features.head[:-1], features.head[-1]
        weights = head if self.weights is None else self.weights
        if weights.shape != head.shape:
            raise ValueError(f"revision weights have {weights.shape[0]} entries, the ranker's layer {head.shape[0]}")
        return RankOutput(expit(features.hidden @ weights + bias), features.attention if self.attention else None)


class LearnerServing:
    """Polls the served base's current revision and turns a user in the share into a `ServingPlan`."""

    def __init__(self, store: RevisionStore, settings: LearnerSettings, served_base: Callable[[], str | None],
                 rng: RequestGenerators = fresh_generator,
                 shown: ShownWriter | None = None) -> None:
        """`shown`: where PDGD's served lists go (`learner.algorithm=pdgd` serves nothing without it)."""
        self.store = store
        self.shown = shown
        self.settings = settings
        self.served_base = served_base
        self.rng = rng
        self.live = LiveRevision(None, None, Control(True))
        self._unreadable: str | None = None  # the revision id last logged as unreadable (logged once)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        """The kill switch: the setting and the stored control must both be on."""
        return self.settings.enabled and self.live.control.enabled

    def refresh(self) -> LiveRevision:
        """Read the current revision of the served base (and the kill switch) and swap it in. The
        switch applies whatever the revision's read does: an unreadable revision counts as none, and
        when Redis fails after the switch was read, the last revision is kept under the new switch."""
        base = self.served_base()
        live = self.live
        if base is None:
            self.live = LiveRevision(None, None, self.store.control())
            return self.live
        poll = self.store.poll(base)
        try:
            revision = self._current(base, poll, live)
        except redis.RedisError:
            self.live = replace(live, control=poll.control)
            raise
        if revision is not None and (live.revision is None or revision.id != live.revision.id):
            log.info("serving online revision %s of %s (%s)", revision.id, base, revision.reason)
        self.live = LiveRevision(base, revision, poll.control)  # one reference assignment: the atomic swap
        return self.live

    def _current(self, base: str, poll: Poll, live: LiveRevision) -> Revision | None:
        """`base`'s current revision, or None: none yet, unreadable (logged), or left behind by the
        learner, which publishes first for the base it starts: a revision of another base is newer
        (the registry went back to `base`; its old revision waits for the learner to start it again
        from its own layer). The revision served already is kept without reading it again."""
        if poll.current is None or poll.newest != poll.current:
            return None
        if live.revision is not None and live.revision.id == poll.current:
            return live.revision
        try:
            return self.store.get(poll.current)
        except redis.RedisError:
            raise
        except Exception as error:  # a revision another version wrote, or a corrupted one
            if poll.current != self._unreadable:
                log.error("online revision %s of %s is unreadable (%r); serving none", poll.current, base, error)
            self._unreadable = poll.current
            return None

    def plan(self, user_id: str, bundle: ModelBundle, request_id: str) -> Served | None:
        """The learner's plan for a user in one of its arms, or None (plain serving, unlabelled):
        `online`, DBGD's interleaved W/W̃/base list or PDGD's Plackett–Luce list of W; `control`, the
        plain list labelled with its arm."""
        live = self.live
        revision = live.revision
        if not (self.enabled and revision is not None):
            return None
        if not serves_ranker(bundle, revision.base):
            return None
        arm = learner_arm(user_id, self.settings.share)
        if arm is None:
            return self._promoted_plan(revision, bundle)
        if self.settings.algorithm == "pdgd" and self.shown is None:
            return None
        if arm == CONTROL:
            return Served(ServingPlan((None,)), LEARNER, CONTROL)
        shared = SharedPenultimate(bundle.ranker)
        if self.settings.algorithm == "pdgd":
            return self._pdgd_plan(shared, revision, user_id, request_id)
        heads = [(TEAMS[0], revision.weights), (TEAMS[1], revision.explore_weights), (TEAMS[2], None)]
        if revision.explore is None:
            heads.pop(1)
        rankers = tuple(HeadRanker(shared, weights, name, team == 0) for team, (name, weights) in enumerate(heads))
        plan = ServingPlan(versions=(None,) * len(rankers), merge=self._interleave(user_id, request_id), label=label(revision.id),
                           teams=tuple(name for name, _ in heads), rankers=rankers)
        return Served(plan, LEARNER, ONLINE)

    def promotes(self, revision: Revision | None) -> bool:
        """Whether `revision`'s `w` serves the users outside the arms: the gate promoted it and
        `learner.promote` is on; never with `learner.share` 0 (the learner is off in this API,
        whatever a stored revision says)."""
        return revision is not None and revision.served and self.settings.promote and self.settings.share > 0

    def _promoted_plan(self, revision: Revision, bundle: ModelBundle) -> Served | None:
        """`w` for a user outside the arms while the gate has it served (see the module docstring)."""
        if not self.promotes(revision):
            return None
        weights = revision.weights / self.settings.sharpness if self.settings.algorithm == "pdgd" else revision.weights
        ranker = HeadRanker(SharedPenultimate(bundle.ranker), weights, TEAMS[0], True)
        return Served(ServingPlan((None,), rankers=(ranker,), ranker_version=f"{revision.base}@{revision.id}"))

    def _pdgd_plan(self, shared: SharedPenultimate, revision: Revision, user_id: str, request_id: str) -> Served:
        """One team (`current`) ranking by W; the merge draws the shown list from W's Plackett–Luce
        model over every ranked candidate and hands the shown items' features to the writer. On the
        gate's share, the base ranks too and the merge shows the two teams' team-draft instead."""
        assert self.shown is not None
        weights, rng, shown = revision.weights, self.rng(user_id, request_id), self.shown

        def merge(rankings: list[list[str]], k: int) -> Merged:
            cached = shared.cached
            if cached is None or cached[1].hidden.shape[1] != len(weights):
                top = rankings[0][:k]  # W's ranker failed, the pipeline ranked by recall score: nothing to learn
                return Merged(top, (0,) * len(top), (1.0,) * len(top))
            ids, features = cached
            scores = features.hidden @ weights
            slots, propensities = sample_list(scores, k, rng)
            items = tuple(ids[i] for i in slots)
            shown.submit(ShownList(user_id, request_id, revision.id, items, features.hidden[slots], scores[slots],
                                   float(logsumexp(scores))))
            return Merged(items, (0,) * len(items), tuple(float(p) for p in propensities))

        current = HeadRanker(shared, weights, TEAMS[0], True)
        if self.settings.promote and rng.random() < self.settings.gate_share:
            def compare(rankings: list[list[str]], k: int) -> Merged:
                tops = [ranking[:k] for ranking in rankings]
                return merge(rankings, k) if k < 2 or tops[0] == tops[1] else team_draft(tops, k, rng)

            plan = ServingPlan(versions=(None, None), merge=compare, label=label(revision.id), teams=(TEAMS[0], TEAMS[2]),
                               rankers=(current, HeadRanker(shared, None, TEAMS[2], False)))
        else:
            plan = ServingPlan(versions=(None,), merge=merge, label=label(revision.id), teams=(TEAMS[0],), rankers=(current,))
        return Served(plan, LEARNER, ONLINE)

    def _interleave(self, user_id: str, request_id: str) -> Callable[[list[list[str]], int], Merged]:
        """DBGD's merge: the probabilistic interleaving of each team's top `depth` (at least k)."""
        def merge(rankings: list[list[str]], k: int) -> Merged:
            depth = max(self.settings.depth, k)  # a longer list than the depth still gets its k items
            return probabilistic([ranking[:depth] for ranking in rankings], k, self.rng(user_id, request_id), self.settings.tau)

        return merge

    def start(self) -> None:
        """Read the current revision, then poll it in the background; PDGD's shown-list writer is
        started only when the learner is PDGD (DBGD's lists need no features)."""
        if self.shown is not None and self.settings.algorithm == "pdgd":
            self.shown.start()
        self._safe_refresh()
        self._thread = threading.Thread(target=self._poll_forever, name="revision-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.shown is not None:
            self.shown.close()

    def _poll_forever(self) -> None:
        while not self._stop.wait(self.settings.poll_interval_s):
            self._safe_refresh()

    def _safe_refresh(self) -> None:
        try:
            self.refresh()
        except Exception:  # Redis away: keep serving the last revision read
            log.exception("reading the current online revision failed; keeping %s", self.live.revision and self.live.revision.id)
