"""Experiments between rankers: A/B tests and interleaving (docs/experiments.md).

Definitions as data (`model`), their store (`store`), validation against the registry and the
layers (`manager`), sticky assignment (`assignment`), the interleaving merges (`interleaving`),
the serving side (`serving`), each method's click credit (`credit`), the statistics (`analysis`) and
the report (`report`, `page`) and the guardrail applied on a schedule (`guardrail`).
"""
