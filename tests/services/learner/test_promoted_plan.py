"""Which users a promoted revision serves (`LearnerServing.plan`), on a real Redis: a `served`
revision of the served base ranks every user outside the learner's arms by its `w`, logged as
`<base>@<revision>` and in no experiment; not while it is unserved, with `learner.promote` off,
with `learner.share` 0, for another base, or when the kill switch is off; and no learner plan at all
while the recall blend's own order is served instead of the ranker. The ranker is planted
(its penultimate features and output layer given), so the expected order is known exactly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import redis
from scipy.special import expit

from feature_store.settings import LearnerSettings
from models.online_revisions import RevisionStore
from models.retrieval.order_choice import OrderChoice
from services.learner.serving import LearnerServing, learner_arm, serves_ranker
from services.recommend.blend_recall import BlendServing
from services.recommend.model_adapters import Penultimate
from services.recommend.pipeline import ModelBundle
from services.recommend.types import Candidate, UserContext

HIDDEN = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [-1.0, 2.0]])  # h(u, i) of four candidates
HEAD = np.array([2.0, -1.0, 0.3])  # the base's [w ; b]: ranks 0, 2, 1, 3


class PlantedRanker:
    name = "planted"
    has_penultimate = True

    def penultimate(self, user: UserContext, candidates: Sequence[Candidate]) -> Penultimate:
        return Penultimate(HIDDEN[: len(candidates)], HEAD, None)


def _serving(redis_client: redis.Redis, **settings: object) -> tuple[LearnerServing, RevisionStore]:
    store = RevisionStore(redis_client, "t")
    serving = LearnerServing(store, LearnerSettings(**{"share": 0.3, **settings}), lambda: "v1")
    return serving, store


def _outside() -> str:
    return next(f"u{n}" for n in range(100) if learner_arm(f"u{n}", 0.3) is None)


BUNDLE = ModelBundle(ranker=PlantedRanker(), versions={"ranker": "v1"})  # type: ignore[arg-type]
CANDIDATES = [Candidate(f"i{n}", 0.0) for n in range(4)]


def test_a_served_revision_ranks_users_outside_the_arms_by_its_w(redis_client: redis.Redis) -> None:
    serving, store = _serving(redis_client)
    revision = store.publish("v1", np.array([-1.0, 3.0]), None, None, "planted", served=True)
    serving.refresh()
    served = serving.plan(_outside(), BUNDLE, "req1")
    assert served is not None and served.context == {}
    plan = served.plan
    assert plan.versions == (None,) and plan.merge is None and plan.ranker_version == f"v1@{revision.id}"
    output = plan.rankers[0].rank(UserContext("u", [], frozenset()), CANDIDATES)
    np.testing.assert_allclose(output.scores, expit(HIDDEN @ [-1.0, 3.0] + 0.3))  # order 3, 1, 2, 0


def test_pdgd_serves_w_over_its_sharpness(redis_client: redis.Redis) -> None:
    serving, store = _serving(redis_client, algorithm="pdgd", sharpness=4.0)
    store.publish("v1", np.array([-4.0, 12.0]), None, None, "planted", served=True)
    serving.refresh()
    served = serving.plan(_outside(), BUNDLE, "req1")
    assert served is not None
    output = served.plan.rankers[0].rank(UserContext("u", [], frozenset()), CANDIDATES)
    np.testing.assert_allclose(output.scores, expit(HIDDEN @ [-1.0, 3.0] + 0.3))


def test_no_promoted_serving_without_every_condition(redis_client: redis.Redis) -> None:
    user = _outside()
    for settings, served, base in [({}, False, "v1"), ({"promote": False}, True, "v1"), ({"share": 0.0}, True, "v1"),
                                   ({}, True, "v0")]:
        redis_client.flushdb()
        serving, store = _serving(redis_client, **settings)
        store.publish(base, np.array([-1.0, 3.0]), None, None, "planted", served=served)
        serving.refresh()
        assert serving.plan(user, BUNDLE, "req1") is None, (settings, served, base)
    serving, store = _serving(redis_client)
    store.publish("v1", np.array([-1.0, 3.0]), None, None, "planted", served=True)
    store.set_control(False, "kill")
    serving.refresh()
    assert serving.plan(user, BUNDLE, "req1") is None
    store.set_control(True, "on")
    serving.refresh()
    assert serving.plan(user, BUNDLE, "req1") is not None


def test_the_learner_serves_nobody_while_the_recall_blend_serves_its_own_order(redis_client: redis.Redis) -> None:
    """Validation chose the blend's order over ranker v1: the learner would update a ranker nobody
    sees, so no user gets a learner plan; when validation chose v1, they do."""
    serving, store = _serving(redis_client)
    store.publish("v1", np.array([-1.0, 3.0]), None, None, "planted", served=True)
    serving.refresh()
    users = [f"u{n}" for n in range(100)]
    for order, planned in (("blend", False), ("ranker", True)):
        blend = BlendServing(None, OrderChoice(order, 0.1, 0.05, 100, 10, "v1"))  # type: ignore[arg-type]  # the recall is not read
        bundle = ModelBundle(ranker=PlantedRanker(), versions={"ranker": "v1"}, blend=blend)  # type: ignore[arg-type]
        assert serves_ranker(bundle, "v1") is planned
        assert all((serving.plan(user, bundle, "req") is not None) is planned for user in users)
