"""Registry: published, blessed and current apart; promote only blessed; rollback walks back
the promotions and revokes; the gate's baseline is the most recently blessed version."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from models.registry import CURRENT, HISTORY, ModelRegistry, RegistryError


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


def _blessed(registry: ModelRegistry, tmp_path: Path, names: str) -> list[str]:
    versions = [_publish(registry, tmp_path, name) for name in names]
    for version in versions:
        registry.bless("ranker", version, {"blessed": True})
    return versions


def test_promoting_the_current_version_again_is_not_a_step_to_roll_back_to(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    a, b = _blessed(registry, tmp_path, "ab")
    registry.promote("ranker", a)
    registry.promote("ranker", b)
    registry.promote("ranker", b)  # already current: nothing to record
    assert registry.rollback("ranker") == a and not registry.blessing("ranker", a).get("revoked")


def test_rollback_never_returns_to_a_rolled_back_version(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    a, b = _blessed(registry, tmp_path, "ab")
    for version in (a, b, a):
        registry.promote("ranker", version)
    assert registry.rollback("ranker") == b  # a revoked
    with pytest.raises(RegistryError, match="no earlier current version"):  # b's previous is the revoked a
        registry.rollback("ranker")
    assert registry.current("ranker").version == b and not registry.blessing("ranker", b).get("revoked")


def test_a_rollback_to_a_damaged_version_fails_and_revokes_nothing(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    a, b = _blessed(registry, tmp_path, "ab")
    registry.promote("ranker", a)
    registry.promote("ranker", b)
    (registry.get("ranker", a).path / "weights.bin").write_bytes(b"truncated")
    with pytest.raises(RegistryError, match="checksum mismatch"):
        registry.rollback("ranker")
    assert registry.current("ranker").version == b and not registry.blessing("ranker", b).get("revoked")


def test_a_current_pointer_to_a_deleted_version_is_listed_and_repaired_by_a_promotion(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    a, b = _blessed(registry, tmp_path, "ab")
    registry.promote("ranker", b)
    shutil.rmtree(registry.get("ranker", b).path)  # removed by hand
    (registry.get("ranker", a).path / "manifest.json").write_text("{")  # and another damaged
    rows = registry.overview("ranker")
    assert [(row["version"], row["current"]) for row in rows] == [(a, False)]
    assert "manifest is not valid JSON" in rows[0]["problem"]
    c = _blessed(registry, tmp_path, "c")[0]
    registry.promote("ranker", c)
    assert registry.current("ranker").version == c and registry.history("ranker")[-1]["previous"] == b


@contextmanager
def _cut_off_at_second_write() -> Iterator[None]:
    """`set_current` writes the role's history and its CURRENT: the second of the two writes
    fails, as a kill or a full disk between them would leave it."""
    real_open, writes = Path.open, []

    def open_(path: Path, *args: Any, **kwargs: Any) -> Any:
        if path.name == HISTORY or path.name.startswith(f".{CURRENT}."):
            writes.append(path.name)
            if len(writes) == 2:
                raise OSError(28, "No space left on device")
        return real_open(path, *args, **kwargs)

    with mock.patch.object(Path, "open", open_), pytest.raises(OSError, match="No space left"):
        yield


def test_a_promotion_cut_off_between_its_two_writes_is_retried_and_can_be_rolled_back(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    a, b = _blessed(registry, tmp_path, "ab")
    registry.promote("ranker", a)
    with _cut_off_at_second_write():
        registry.promote("ranker", b)
    registry.promote("ranker", b)  # the resumed promote step
    assert registry.current_name("ranker") == b
    assert registry.rollback("ranker") == a and registry.current_name("ranker") == a


def test_rollback_skips_a_change_that_was_cut_off(tmp_path: Path) -> None:
    """x, then v promoted; u made current without the gate (`recsys train ranker --set-current`);
    a promotion of v cut off; u rolled back to v: v's rollback returns to x, before it, not to u."""
    registry = ModelRegistry(tmp_path / "registry")
    x, v = _blessed(registry, tmp_path, "xv")
    u = _publish(registry, tmp_path, "u")
    registry.promote("ranker", x)
    registry.promote("ranker", v)
    registry.set_current("ranker", u)
    with _cut_off_at_second_write():
        registry.promote("ranker", v)
    assert registry.rollback("ranker") == v
    assert registry.rollback("ranker") == x
