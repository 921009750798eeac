"""Import manifests: the record that a dataset was imported, which makes imports idempotent.

A manifest is `<state_dir>/imports/<key>.json`, where the key is a digest of the source (the
bytes of the source files, or the generator's parameters). It is written last, atomically, so
an import that crashed part way leaves no manifest and runs again; the event log reader drops the
duplicate event ids such a rerun appends.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

_CHUNK = 1 << 20


def digest_files(label: str, paths: Iterable[Path]) -> str:
    """sha256 over `label` and each file's name and bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256(label.encode())
    for path in paths:
        digest.update(f"\0{path.name}\0".encode())
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def digest_params(label: str, params: dict[str, Any]) -> str:
    """sha256 over `label` and the JSON of `params` (keys sorted)."""
    return hashlib.sha256(f"{label}\0{json.dumps(params, sort_keys=True)}".encode()).hexdigest()


def imports_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "imports"


def read_manifest(state_dir: Path, key: str) -> dict[str, Any] | None:
    """The manifest recorded for `key`, or None if that source was never fully imported."""
    path = imports_dir(state_dir) / f"{key}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def write_manifest(state_dir: Path, key: str, content: dict[str, Any]) -> Path:
    """Write the manifest for `key` atomically (tmp file, fsync, rename); returns its path."""
    directory = imports_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{key}.json"
    tmp = directory / f".{key}.json.tmp"
    with tmp.open("w") as handle:
        json.dump(content, handle, indent=2, sort_keys=True, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path
