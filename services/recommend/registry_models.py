"""Wiring to the model registry: which versions are current, and loading them into a `ModelBundle`.

A role whose current version cannot be loaded (corrupt artifact, a manifest that does not read,
a `CURRENT` naming a deleted version, missing code) keeps its last good version in the bundle (or
is left out if it never had one), and the failure is remembered: the same version is tried again
`api.model_retry_s` after it failed (a file briefly missing on a network filesystem), not at every
poll, which would re-hash and re-load a broken artifact each time; publishing a new version moves
on at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from feature_store.settings import Settings
from models.registry import ModelRegistry, ModelVersion, RegistryError
from services.recommend.online_store import ServingStore
from services.recommend.pipeline import EXTRA_RANKER, ModelBundle

log = logging.getLogger(__name__)

ROLES = ("recall", "ranker")


class RegistryVersionSource:
    """Current version per role, read from the registry's CURRENT pointers, and the extra ranker
    versions running experiments need (`ranker:<version>`)."""

    def __init__(self, root: Path, extra_rankers: Callable[[], Iterable[str]] = lambda: ()) -> None:
        self.registry = ModelRegistry(root)
        self.extra_rankers = extra_rankers

    def current_versions(self) -> dict[str, str]:
        """The versions `CURRENT` names, whether or not they read: one that does not is the
        loader's failure to report, while the role's last good version keeps serving."""
        versions = {}
        for role in ROLES:
            try:
                current = self.registry.current_name(role)
            except RegistryError as exc:
                log.error("registry role %s: %s", role, exc)
                continue
            if current is not None:
                versions[role] = current
        for version in self.extra_rankers():
            if version != versions.get("ranker"):
                versions[EXTRA_RANKER + version] = version
        return versions


class RegistryBundleLoader:
    """Loads the registry's current recall and ranker versions into one immutable bundle."""

    def __init__(self, settings: Settings, store: ServingStore) -> None:
        self.settings = settings
        self.store = store
        self.registry = ModelRegistry(settings.model_registry_dir)
        self.failed: dict[str, tuple[str, float]] = {}  # "role/version" -> error, when (monotonic)
        self._good: dict[str, tuple[str, dict[str, object]]] = {}  # role -> last good version, its parts
        # role -> the good version it replaced, kept loaded so a rollback swaps without loading
        self._previous: dict[str, tuple[str, dict[str, object]]] = {}

    def __call__(self, versions: dict[str, str]) -> ModelBundle:
        parts: dict[str, object] = {}
        loaded: dict[str, str] = {}
        for role, version in versions.items():
            if self._good.get(role, ("",))[0] != version and self._due(f"{role}/{version}"):
                self._load_good(role, version)
            if role in self._good:  # the wanted version, or the last good one when it failed
                loaded[role], role_parts = self._good[role]
                if not role.startswith(EXTRA_RANKER):
                    parts.update(role_parts)
        self._good = {role: self._good[role] for role in loaded}  # a role no longer current is let go
        self._previous = {role: kept for role, kept in self._previous.items() if role in loaded}
        rankers = {loaded[key]: self._good[key][1]["ranker"] for key in loaded if key.startswith(EXTRA_RANKER)}
        return ModelBundle(
            channels=tuple(parts.get("channels", ())),  # type: ignore[arg-type]
            ranker=parts.get("ranker"),  # type: ignore[arg-type]
            similar=parts.get("similar"),  # type: ignore[arg-type]
            blend=parts.get("blend"),  # type: ignore[arg-type]
            rankers=rankers,  # type: ignore[arg-type]
            versions=loaded,
            errors={key: error for key, (error, _) in self.failed.items() if key.split("/")[0] in versions
                    and versions[key.split("/")[0]] == key.split("/", 1)[1]},
        )

    def _due(self, key: str) -> bool:
        """Whether `role/version` is to be loaded: never failed, or failed `api.model_retry_s` ago."""
        failure = self.failed.get(key)
        return failure is None or time.monotonic() - failure[1] >= self.settings.api.model_retry_s

    def _load_good(self, role: str, version: str) -> None:
        """Load `version` of `role` as its last good version, or remember why it cannot be."""
        replaced = self._good.get(role)
        if self._previous.get(role, ("",))[0] == version:  # a rollback: already loaded and verified
            self._good[role], self._previous[role] = self._previous[role], replaced  # type: ignore[assignment]
            return
        try:
            model_version = self.registry.get(_registry_role(role), version)
            self.registry.verify(model_version)
            self._good[role] = (version, self._load(role, model_version))
            self.failed.pop(f"{role}/{version}", None)
            if replaced is not None:
                self._previous[role] = replaced
        except Exception as exc:  # any bad artifact: keep serving the last good one, if any
            key = f"{role}/{version}"
            self.failed[key] = (f"{type(exc).__name__}: {exc}", time.monotonic())
            log.error("cannot load %s: %s", key, self.failed[key][0])

    def _load(self, role: str, version: ModelVersion) -> dict[str, object]:
        from services.recommend import model_adapters

        if _registry_role(role) == "ranker":
            # TensorFlow's thread counts come from the environment (`services.api.app`).
            return {"ranker": model_adapters.load_ranker(version, self.settings.api.ranker, self.store)}
        if role == "recall":
            from services.recommend.blend_recall import load_blend

            channels, similar = model_adapters.load_recall(version, threads=self.settings.api.inference_threads)
            return {"channels": channels, "similar": similar, "blend": load_blend(version, self.settings.api.reason_recent)}
        raise RegistryError(f"no loader for role {role!r}")


def _registry_role(role: str) -> str:
    """The registry role of a bundle key: an experiment's `ranker:<version>` is a ranker."""
    return "ranker" if role.startswith(EXTRA_RANKER) else role
