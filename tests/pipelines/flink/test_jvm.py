"""The job's own jar (pipelines/flink/jvm.py): built once per source version and reused; absent,
not an error, where no JDK compiler is installed. Its classes' effects on a real job are tested in
test_flink_stream_job.py (a backlog read without late outcomes; a restart's late decisions)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from pipelines.flink.jvm import job_jar


def test_the_jar_holds_the_classes_and_is_built_once(tmp_path: Path) -> None:
    jar = job_jar(tmp_path)
    assert jar is not None and jar.parent == tmp_path
    with zipfile.ZipFile(jar) as archive:
        names = set(archive.namelist())
    classes = {"PathOrderedSplitAssigner.class", "PathOrderedSplitAssigner$Provider.class", "WatermarkFloor.class"}
    assert {f"recsys/flink/{name}" for name in classes} <= names
    built = jar.stat().st_mtime_ns
    assert job_jar(tmp_path) == jar and jar.stat().st_mtime_ns == built
    assert [p.name for p in tmp_path.iterdir()] == [jar.name]  # no build leftovers


def test_without_javac_there_is_no_jar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine with a Java runtime only
    assert job_jar(tmp_path / "cache") is None
