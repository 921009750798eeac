"""The model registry: atomic publication, current pointer, checksum verification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.registry import CorruptArtifactError, ModelRegistry, RegistryError

MANIFEST = {"params": {"dim": 16}, "data_window": {"start": "a", "end": "b"}, "metrics": {"hr@10": 0.1}}


def _artifact(tmp_path: Path, name: str = "out", payload: bytes = b"vectors") -> Path:
    folder = tmp_path / name
    (folder / "index").mkdir(parents=True)
    (folder / "embeddings.npy").write_bytes(payload)
    (folder / "index" / "faiss.index").write_bytes(b"index-bytes")
    return folder


def test_publish_writes_manifest_with_checksums_and_keeps_source(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    source = _artifact(tmp_path)
    version = registry.publish("recall", source, MANIFEST)

    published = registry.get("recall", version)
    assert (published.path / "embeddings.npy").read_bytes() == b"vectors"
    assert set(published.manifest["files"]) == {"embeddings.npy", "index/faiss.index"}
    assert published.manifest["params"] == {"dim": 16}
    assert published.manifest["role"] == "recall" and published.manifest["version"] == version
    assert "created_at" in published.manifest
    assert source.is_dir()
    registry.verify(published)
    assert not [p for p in (tmp_path / "registry" / "recall").iterdir() if p.name.startswith(".")]


def test_current_pointer_and_versions_order(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.current("recall") is None
    first = registry.publish("recall", _artifact(tmp_path, "a"), MANIFEST)
    second = registry.publish("recall", _artifact(tmp_path, "b", b"other"), MANIFEST, move=True)
    assert not (tmp_path / "b").exists()
    assert registry.versions("recall") == [first, second]
    assert registry.versions("ranker") == []

    registry.set_current("recall", first)
    assert registry.current("recall").version == first
    registry.set_current("recall", second)
    current = registry.current("recall")
    assert current is not None and current.version == second
    assert current.file("embeddings.npy").read_bytes() == b"other"
    assert (tmp_path / "registry" / "recall" / "CURRENT").read_text().strip() == second


def test_corrupt_artifact_is_refused(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    version = registry.publish("recall", _artifact(tmp_path), MANIFEST)
    (tmp_path / "registry" / "recall" / version / "embeddings.npy").write_bytes(b"vectorz")
    with pytest.raises(CorruptArtifactError, match="checksum mismatch for embeddings.npy"):
        registry.verify(registry.get("recall", version))
    with pytest.raises(CorruptArtifactError):
        registry.set_current("recall", version)
    assert registry.current("recall") is None


def test_missing_and_extra_files_are_refused(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    version = registry.publish("recall", _artifact(tmp_path), MANIFEST)
    folder = tmp_path / "registry" / "recall" / version
    (folder / "index" / "faiss.index").unlink()
    with pytest.raises(CorruptArtifactError, match="index/faiss.index is missing"):
        registry.verify(registry.get("recall", version))
    (folder / "index" / "faiss.index").write_bytes(b"index-bytes")
    (folder / "stray.bin").write_bytes(b"x")
    with pytest.raises(CorruptArtifactError, match="unexpected file stray.bin"):
        registry.verify(registry.get("recall", version))


def test_bad_requests_get_clear_errors(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    with pytest.raises(RegistryError, match="does not exist"):
        registry.publish("recall", tmp_path / "nowhere", MANIFEST)
    with pytest.raises(RegistryError, match="'metrics'"):
        registry.publish("recall", _artifact(tmp_path), {"params": {}, "data_window": {}})
    with pytest.raises(RegistryError, match="invalid role"):
        registry.publish("../evil", _artifact(tmp_path, "c"), MANIFEST)
    with pytest.raises(RegistryError, match="no version"):
        registry.set_current("recall", "20990101T000000000000Z-abcdef")
    source = _artifact(tmp_path, "d")
    (source / "manifest.json").write_text(json.dumps({}))
    with pytest.raises(RegistryError, match="written by the registry"):
        registry.publish("recall", source, MANIFEST, move=True)
    assert source.is_dir()
    assert registry.versions("recall") == []


def _strict_json(path: Path) -> dict:
    def refuse(token: str) -> None:
        raise ValueError(f"{path.name} holds the non-JSON token {token}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_undefined_metrics_are_written_as_null_so_strict_readers_load_manifests(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    manifest = MANIFEST | {"metrics": {"validation": {"auc": float("nan"), "gauc": 0.7}, "ratio": float("inf")}}
    version = registry.publish("ranker", _artifact(tmp_path), manifest)
    registry.bless("ranker", version, {"checks": [{"metric": "auc", "value": float("nan"), "baseline": 0.6}]})

    written = _strict_json(registry.get("ranker", version).path / "manifest.json")
    assert written["metrics"] == {"validation": {"auc": None, "gauc": 0.7}, "ratio": None}
    blessing = _strict_json(tmp_path / "registry" / "ranker" / "blessings" / f"{version}.json")
    assert blessing["decision"]["checks"] == [{"metric": "auc", "value": None, "baseline": 0.6}]
