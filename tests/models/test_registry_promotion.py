"""Registry: published, blessed and current apart; promote only blessed; rollback walks back
the promotions and revokes; the gate's baseline is the most recently blessed version."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.registry import ModelRegistry, RegistryError


def _publish(registry: ModelRegistry, tmp_path: Path, name: str) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "weights.bin").write_bytes(name.encode())
    return registry.publish("ranker", folder, {"params": {}, "data_window": {}, "metrics": {}})


def test_promote_rollback_and_blessed_baseline(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    a, b, c = (_publish(registry, tmp_path, name) for name in "abc")
    with pytest.raises(RegistryError, match="not blessed"):
        registry.promote("ranker", a)
    assert registry.current("ranker") is None and registry.blessed("ranker") is None

    for version in (c, a, b):  # blessed out of publication order: the baseline follows blessing time
        registry.bless("ranker", version, {"blessed": True})
    assert registry.blessed("ranker").version == b
    registry.promote("ranker", a)
    registry.promote("ranker", b)
    registry.promote("ranker", c)
    assert registry.current("ranker").version == c

    assert registry.rollback("ranker") == b
    assert registry.blessing("ranker", c)["revoked"] and registry.blessed("ranker").version == b
    assert registry.rollback("ranker") == a  # the promotion before b's, not back to c
    with pytest.raises(RegistryError, match="no earlier current version"):
        registry.rollback("ranker")
    with pytest.raises(RegistryError, match="was rolled back"):
        registry.promote("ranker", c)
    assert [(e["action"], e["version"], e["previous"]) for e in registry.history("ranker")] == [
        ("promote", a, None), ("promote", b, a), ("promote", c, b), ("rollback", b, c), ("rollback", a, b),
    ]  # fmt: skip
    overview = {row["version"]: row for row in registry.overview("ranker")}
    assert overview[a]["current"] and overview[b]["revoked"] and overview[c]["revoked"]
    assert registry.role_of(b) == "ranker"
