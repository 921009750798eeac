"""The policy that `explore` settings name."""

from __future__ import annotations

from feature_store.settings import ExploreSettings
from services.explore.epsilon_greedy import EpsilonGreedy
from services.explore.greedy import Greedy
from services.explore.linucb import LinUcb
from services.explore.policy import Policy
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
