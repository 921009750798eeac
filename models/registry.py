"""The model registry: versioned artifact folders with manifests and a current pointer per role.

Layout, under the registry root::

    <role>/<version>/...              the artifact files, exactly as the trainer wrote them
    <role>/<version>/manifest.json    params, data window, metrics, created_at, sha256 of each file
    <role>/CURRENT                    one line: the version being served
    <role>/pins/<name>                one line: the version a name (e.g. `candidate`) pins
    <role>/HISTORY.jsonl              every change of CURRENT (version, previous, action, time)
    <role>/blessings/<version>.json   the quality gate's decision for a blessed version
    <role>/.tmp-*                     publications in progress (ignored by readers)

Both writes are atomic: `publish` fills a hidden temp folder and renames it into place, and
`set_current` writes a temp file and renames it over `CURRENT`, so a reader (the API polling for a
new version) sees either the old state or the new one, never a half-written folder or pointer.

Usage::

    registry = ModelRegistry(settings.model_registry_dir)
    version = registry.publish("recall", out_dir, {"params": {...}, "data_window": {...},
                                                    "metrics": {...}})
    registry.set_current("recall", version)
    current = registry.current("recall")        # ModelVersion | None
    registry.verify(current)                     # raises CorruptArtifactError on a bad checksum

Published, blessed and current are apart: every published version can be read; `bless` records
that one passed the quality gate (the training DAG's decision and numbers); `promote` makes only
a blessed version current; `rollback` returns to the version that was current before it and
revokes the rolled-back version's blessing, so it is not promoted again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from feature_store.json_values import json_safe

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
PINS = "pins"
HISTORY = "HISTORY.jsonl"
BLESSINGS = "blessings"
ROLES = ("recall", "ranker")
REQUIRED_MANIFEST_KEYS = ("params", "data_window", "metrics")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_HASH_CHUNK = 1 << 20


class RegistryError(RuntimeError):
    """A registry operation was asked for something that does not exist or is malformed."""


class CorruptArtifactError(RegistryError):
    """An artifact's files do not match the checksums in its manifest."""


@dataclass(frozen=True)
class ModelVersion:
    """One published version of a role: where it lives and what its manifest says."""

    role: str
    version: str
    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        """Path of one artifact file, refusing names the manifest does not list."""
        if name not in self.manifest.get("files", {}):
            raise RegistryError(f"{self.role}/{self.version} has no artifact file {name!r}")
        return self.path / name


class ModelRegistry:
    """Versions and current pointers for model roles ("recall", "ranker") under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def publish(
        self, role: str, source_dir: Path, manifest: dict[str, Any], *, move: bool = False
    ) -> str:
        """Publish the finished artifact folder `source_dir` as a new version of `role`.

        `manifest` must hold `params`, `data_window` and `metrics` (dicts); the registry adds
        `role`, `version`, `created_at` and `files` (sha256 of every file). The folder is copied
        (or moved when `move=True`) into a temp dir and renamed into place. Returns the version.
        """
        _check_name(role, "role")
        source_dir = Path(source_dir)
        if not source_dir.is_dir():
            raise RegistryError(f"artifact folder {source_dir} does not exist")
        _check_manifest(manifest)
        if (source_dir / MANIFEST).exists():
            raise RegistryError(f"{source_dir} already contains a {MANIFEST}; it is written by the registry")
        role_dir = self.root / role
        role_dir.mkdir(parents=True, exist_ok=True)
        version = _new_version()
        staging = role_dir / f".tmp-{version}"
        try:
            if move:
                shutil.move(str(source_dir), staging)
            else:
                shutil.copytree(source_dir, staging)
            full = {
                **manifest,
                "role": role,
                "version": version,
                "created_at": _now(),
                "files": _checksums(staging),
            }
            _write_durably(staging / MANIFEST, json.dumps(json_safe(full), indent=2, sort_keys=True, default=str))
            os.rename(staging, role_dir / version)
            _fsync_dir(role_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version

    def versions(self, role: str) -> list[str]:
        """Published versions of `role`, oldest first (versions sort by creation time)."""
        _check_name(role, "role")
        role_dir = self.root / role
        if not role_dir.is_dir():
            return []
        return sorted(
            p.name for p in role_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
        )

    def get(self, role: str, version: str) -> ModelVersion:
        """The published `version` of `role`; raises RegistryError when it does not exist."""
        return ModelVersion(role, version, self._version_dir(role, version), self.load_manifest(role, version))

    def load_manifest(self, role: str, version: str) -> dict[str, Any]:
        """The manifest of one version, as published."""
        path = self._version_dir(role, version) / MANIFEST
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RegistryError(f"{role}/{version} has no {MANIFEST} (not a published version)") from None
        except json.JSONDecodeError as exc:
            raise CorruptArtifactError(f"{path}: manifest is not valid JSON ({exc})") from None

    def current(self, role: str) -> ModelVersion | None:
        """The version `CURRENT` points at, or None when the role has no current version yet
        (RegistryError when it points at a version that is gone: `set_current` still repairs it)."""
        version = self.current_name(role)
        return None if version is None else self.get(role, version)

    def current_name(self, role: str) -> str | None:
        """The version name in `CURRENT`, whether or not that version still exists."""
        _check_name(role, "role")
        try:
            return (self.root / role / CURRENT).read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def set_current(self, role: str, version: str, action: str = "set_current") -> None:
        """Append the change to the role's history, then point `role` at `version` (after
        verifying its checksums), atomically."""
        self.verify(self.get(role, version))
        previous = self.current_name(role)  # a version deleted by hand is still replaced
        role_dir = self.root / role
        # History first: a change cut off between the two writes leaves an entry that never took
        # effect (`_effective_history` skips it), never a CURRENT without its entry, which no
        # rollback could go back from.
        entry = {"at": _now(), "action": action, "version": version, "previous": previous}
        with (role_dir / HISTORY).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        _write_durably(role_dir / f".{CURRENT}.{uuid.uuid4().hex}", version + "\n", replace=role_dir / CURRENT)

    def history(self, role: str) -> list[dict[str, Any]]:
        """Every change of `role`'s current version, oldest first."""
        _check_name(role, "role")
        path = self.root / role / HISTORY
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def bless(self, role: str, version: str, decision: dict[str, Any]) -> None:
        """Record that `version` passed the quality gate, with the gate's `decision` (its numbers)."""
        self.get(role, version)
        self._write_blessing(role, version, {"version": version, "blessed_at": _now(), "decision": decision})

    def blessing(self, role: str, version: str) -> dict[str, Any] | None:
        """The gate record of a blessed `version` (with `revoked` once rolled back), else None."""
        _check_name(version, "version")
        path = self.root / role / BLESSINGS / f"{version}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None

    def blessed(self, role: str) -> ModelVersion | None:
        """The most recently blessed, not revoked version of `role`."""
        version = self.blessed_name(role)
        return None if version is None else self.get(role, version)

    def blessed_name(self, role: str) -> str | None:
        """The name of `blessed(role)`, without reading its manifest."""
        records = [r for r in map(lambda v: self.blessing(role, v), self.versions(role)) if r and not r.get("revoked")]
        latest = max(records, key=lambda record: record["blessed_at"], default=None)
        return None if latest is None else str(latest["version"])

    def promote(self, role: str, version: str) -> None:
        """Make the blessed `version` current; refuse a version the gate did not bless."""
        record = self.blessing(role, version)
        if record is None or record.get("revoked"):
            state = "was rolled back" if record else "is not blessed"
            raise RegistryError(f"{role}/{version} {state}: only a blessed version can be promoted")
        if self.current_name(role) == version:
            return  # already current: a history entry naming it its own previous would be rolled back to itself
        self.set_current(role, version, action="promote")

    def rollback(self, role: str) -> str:
        """Make current again the version that was current before the current one (the latest
        such that is not itself rolled back), revoke the current one's blessing, and return the
        version now current. Nothing changes when that version fails its checksums."""
        current = self.current(role)
        if current is None:
            raise RegistryError(f"role {role!r} has no current version to roll back")
        previous = self._rollback_target(role, current.version)
        if previous is None:
            raise RegistryError(f"{role}/{current.version} has no earlier current version to roll back to")
        self.verify(self.get(role, previous))  # before the revocation: a failed rollback revokes nothing
        record = self.blessing(role, current.version)
        if record is not None:
            self._write_blessing(role, current.version, {**record, "revoked": True, "revoked_at": _now()})
        self.set_current(role, previous, action="rollback")
        return previous

    def _rollback_target(self, role: str, current: str) -> str | None:
        """What was current before each time `current` was made current, latest first: the first
        that is another version, still published and not rolled back itself."""
        made_current = [e for e in self._effective_history(role) if e["version"] == current and e["action"] != "rollback"]
        published = set(self.versions(role))
        for entry in reversed(made_current):
            previous = entry["previous"]
            if previous in (None, current) or previous not in published:
                continue
            if not (self.blessing(role, previous) or {}).get("revoked"):
                return str(previous)
        return None

    def _effective_history(self, role: str) -> list[dict[str, Any]]:
        """The history without the entries of changes cut off before CURRENT moved: an entry took
        effect when the next change started from its version (the last one: when it is current)."""
        entries = self.history(role)
        then = [entry["previous"] for entry in entries[1:]] + [self.current_name(role)]
        return [entry for entry, after in zip(entries, then) if after == entry["version"]]

    def role_of(self, version: str) -> str:
        """The role (of `ROLES`) that published `version`."""
        for role in ROLES:
            if version in self.versions(role):
                return role
        raise RegistryError(f"no published version {version!r} under {self.root}")

    def overview(self, role: str) -> list[dict[str, Any]]:
        """Every published version of `role`, oldest first: created_at, blessed, revoked, current,
        and `problem` (why its manifest does not read, else None)."""
        current = self.current_name(role)
        rows = []
        for version in self.versions(role):
            blessing = self.blessing(role, version) or {}
            try:
                created, problem = self.load_manifest(role, version).get("created_at"), None
            except RegistryError as exc:  # one damaged version must not hide the others
                created, problem = None, str(exc)
            rows.append({"role": role, "version": version, "created_at": created, "blessed": bool(blessing),
                         "revoked": bool(blessing.get("revoked")), "current": current == version, "problem": problem})  # fmt: skip
        return rows

    def _write_blessing(self, role: str, version: str, record: dict[str, Any]) -> None:
        folder = self.root / role / BLESSINGS
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(json_safe(record), indent=2, sort_keys=True, default=str)
        _write_durably(folder / f".{version}.{uuid.uuid4().hex}", text, replace=folder / f"{version}.json")

    def verify(self, version: ModelVersion) -> None:
        """Check every file against the manifest's sha256; raise CorruptArtifactError naming
        the first missing, extra or altered file."""
        expected: dict[str, str] = version.manifest.get("files", {})
        actual_names = {name for name in _relative_files(version.path) if name != MANIFEST}
        for name in sorted(set(expected) - actual_names):
            raise CorruptArtifactError(f"{version.role}/{version.version}: file {name} is missing")
        for name in sorted(actual_names - set(expected)):
            raise CorruptArtifactError(f"{version.role}/{version.version}: unexpected file {name}")
        for name, digest in sorted(expected.items()):
            if _sha256(version.path / name) != digest:
                raise CorruptArtifactError(
                    f"{version.role}/{version.version}: checksum mismatch for {name} "
                    "(the file was altered or truncated after publication)"
                )

    def _version_dir(self, role: str, version: str) -> Path:
        _check_name(role, "role")
        _check_name(version, "version")
        path = self.root / role / version
        if not path.is_dir():
            raise RegistryError(f"no version {version!r} of role {role!r} under {self.root}")
        return path

    def pin(self, role: str, name: str, version: str) -> None:
        """Point the name `name` of `role` at `version` (e.g. `candidate` for an experiment),
        atomically, in `<role>/pins/<name>`; `current` is CURRENT's and cannot be pinned here."""
        _check_name(name, "pin")
        if name == "current":
            raise RegistryError("'current' is set with set_current, not pinned")
        self.get(role, version)
        pins = self.root / role / PINS
        pins.mkdir(parents=True, exist_ok=True)
        _write_durably(pins / f".{name}.{uuid.uuid4().hex}", version + "\n", replace=pins / name)

    def resolve(self, role: str, reference: str) -> ModelVersion:
        """The version a reference names: `current`, a pin name, or a version id (in that order);
        raises RegistryError when it names none."""
        if reference == "current":
            current = self.current(role)
            if current is None:
                raise RegistryError(f"role {role!r} has no current version")
            return current
        _check_name(reference, "reference")
        try:
            pinned = (self.root / role / PINS / reference).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return self.get(role, reference)
        return self.get(role, pinned)


def _check_name(name: str, what: str) -> None:
    if not _NAME.fullmatch(name or ""):
        raise RegistryError(f"invalid {what} name {name!r}: use letters, digits, '_', '.', '-'")


def _check_manifest(manifest: dict[str, Any]) -> None:
    for key in REQUIRED_MANIFEST_KEYS:
        if not isinstance(manifest.get(key), dict):
            raise RegistryError(f"manifest needs a {key!r} dict (got {type(manifest.get(key)).__name__})")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _new_version() -> str:
    # Sorts by creation time; the random suffix keeps two publications in one microsecond apart.
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:6]


def _relative_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _checksums(root: Path) -> dict[str, str]:
    return {name: _sha256(root / name) for name in _relative_files(root)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_durably(path: Path, text: str, replace: Path | None = None) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    if replace is not None:
        os.replace(path, replace)
        _fsync_dir(replace.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
