"""Dataset importers (MovieLens) and the synthetic data generator.

Both write events through the event log and entities through the catalog, record an import
manifest so running them twice adds nothing, and report progress through an `OnProgress` hook
so the CLI can draw a progress bar without the library depending on a terminal.
"""

from __future__ import annotations

from typing import Callable

OnProgress = Callable[[str, int, int], None]
"""`(phase, done, total)`: called as a long phase advances; `done` and `total` share a unit."""


def no_progress(phase: str, done: int, total: int) -> None:
    """The default `OnProgress`: report nothing."""
