"""The policy that `explore` settings name."""

from __future__ import annotations

from feature_store.linucb_store import RedisLinUcbStore, context_dim, context_ttl_ms
from feature_store.online_store import RedisOnlineStore
from feature_store.settings import ExploreSettings, Settings
from services.explore.epsilon_greedy import EpsilonGreedy
from services.explore.greedy import Greedy
from services.explore.linucb import LinUcb
from services.explore.policy import Policy
from services.explore.randomness import request_generators
from services.explore.stage import ExploreStage
from services.explore.stats import BanditStats
from services.explore.thompson import Thompson
from services.explore.ucb import Ucb1


def policy_from_settings(explore: ExploreSettings) -> Policy:
    """`explore.policy` with its parameters (validated by the settings)."""
    match explore.policy:
        case "greedy":
            return Greedy()
        case "epsilon_greedy":
            return EpsilonGreedy(explore.epsilon)
        case "ucb1":
            return Ucb1(explore.prior_strength, explore.ucb_c)
        case "thompson":
            return Thompson(explore.prior_strength, explore.thompson_draws)
        case "linucb":
            return LinUcb(explore.linucb_alpha)
    raise ValueError(f"unknown explore policy {explore.policy!r}")


def explore_stage_from_settings(settings: Settings, features: RedisOnlineStore, salt: int | None = None) -> ExploreStage:
    """The configured policy with its reads: examined counts from the attribution store, LinUCB
    statistics of the item embedding's dimension; each request draws from `salt` and its id
    (`services.explore.randomness`)."""
    policy = policy_from_settings(settings.explore)
    rng = request_generators(settings.explore.seed, salt)
    if policy.needs is None:
        return ExploreStage(policy, rng=rng)
    linucb = RedisLinUcbStore(features.spec, context_dim(), settings.explore.linucb_ridge, settings.feature_store.dedup_ttl_s)
    explore = settings.explore
    stats = BanditStats(features, features.attribution(), linucb, explore.stats_window, context_ttl_ms(settings),
                        explore.stats_cache_s, explore.stats_cache_items)
    return ExploreStage(policy, stats, rng)

