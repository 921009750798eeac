"""Hot model swap: watch the registry's CURRENT pointers, load new versions aside, swap atomically.

A request reads `manager.bundle` once and keeps that object to the end, so requests in flight
finish on the old models while the next ones get the new bundle; loading happens in a background
thread (or in `check_now()` for the admin reload), never on the request path. A version that fails
to load is logged and reported (`error`), and the last good models of its role keep serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from services.recommend.pipeline import ModelBundle

log = logging.getLogger(__name__)


class VersionSource(Protocol):
    """Where the current model versions come from (the model registry), per role."""

    def current_versions(self) -> dict[str, str]: ...


BundleLoader = Callable[[dict[str, str]], ModelBundle]


class NoModels:
    """A version source for a deployment without a registry: always popularity."""

    def current_versions(self) -> dict[str, str]:
        return {}


class ModelManager:
    """Holds the serving bundle and replaces it when the registry's versions change."""

    def __init__(
        self,
        source: VersionSource,
        loader: BundleLoader,
        poll_interval_s: float = 5.0,
        on_swap: Callable[[ModelBundle], None] | None = None,
    ) -> None:
        self.source = source
        self.loader = loader
        self.poll_interval_s = poll_interval_s
        self.on_swap = on_swap or (lambda bundle: None)
        self._bundle = ModelBundle()
        self._requested: dict[str, str] | None = None
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.loaded_once = False
        self.last_error: str | None = None
        self.swaps = 0

    @property
    def bundle(self) -> ModelBundle:
        return self._bundle

    @property
    def error(self) -> str | None:
        """Why the registry's current versions are not all served; None when they are."""
        failures = [f"{key}: {why}" for key, why in sorted(self._bundle.errors.items())]
        return "; ".join(filter(None, [self.last_error, *failures])) or None

    def check_now(self) -> bool:
        """Load and swap in the registry's current versions if they changed; True if the served
        versions changed (or on the first load)."""
        with self._load_lock:
            try:
                wanted = self.source.current_versions()
                if wanted == self._requested and not self._bundle.errors:  # a failed version is retried
                    return False
                bundle = self.loader(wanted)
            except Exception as exc:  # a bad artifact must not take serving down
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("model load failed; still serving versions %s", self._bundle.versions)
                return False
            changed = bundle.versions != self._bundle.versions or not self.loaded_once
            self._bundle = bundle  # one reference assignment: the atomic swap
            self._requested = wanted
            self.loaded_once = True
            self.last_error = None
            if changed:
                self.swaps += 1
                log.info("serving model versions %s", bundle.versions or "none (popularity)")
                self.on_swap(bundle)
            return changed

    def start(self) -> None:
        self.check_now()
        self._thread = threading.Thread(target=self._poll_forever, name="model-poller", daemon=True)
        self._thread.start()

    def _poll_forever(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            self.check_now()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
