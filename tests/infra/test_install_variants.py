"""The CPU and GPU installs resolve with the pinned constraints, each with only its own TensorFlow and
faiss: `tensorflow-cpu` and `tensorflow`, `faiss-cpu` and `faiss-gpu-cu12` install the same modules,
so an install holding both has whichever was written last. Resolved by pip (`--dry-run`), since no
GPU machine is needed to tell what would be installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"cpu": {"tensorflow-cpu", "faiss-cpu"}, "gpu": {"tensorflow", "faiss-gpu-cu12"}}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def package_index() -> None:
    probe = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "tensorflow", "--retries", "1"],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        last_line = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"the package index is unreachable, so pip cannot resolve the installs ({last_line})")


def _resolve(extras: str, report: Path) -> set[str]:
    """Names of every distribution the Makefile's install command would install into an empty venv."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), "-c", "constraints.txt", "-e", f".[{extras}]"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-3000:]}"
    return {item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"]}


@pytest.mark.parametrize(("variant", "other"), [("cpu", "gpu"), ("gpu", "cpu")])
def test_each_variant_installs_only_its_own_tensorflow_and_faiss(
    variant: str, other: str, package_index: None, tmp_path: Path
) -> None:
    installed = _resolve(f"{variant},test", tmp_path / "report.json")
    assert PACKAGES[variant] <= installed
    assert not PACKAGES[other] & installed
