"""The CPU and GPU installs resolve with the pinned constraints, each with only its own TensorFlow and
faiss: `tensorflow-cpu` and `tensorflow`, `faiss-cpu` and `faiss-gpu-cu12` install the same modules,
so an install holding both has whichever was written last. The container image installs the
variant's extra alone (infra/Dockerfile), without `test`: it must still hold every third-party
module the project's packages import at module level, or every `recsys` command in the image fails
at its first import. Resolved by pip (`--dry-run`), since no GPU machine is needed to tell what
would be installed."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
#: Distributions that install the same modules: the CPU build and the GPU build.
SAME_MODULES = {"tensorflow-cpu": "tensorflow", "faiss-cpu": "faiss-gpu-cu12"}
PACKAGES = {"cpu": set(SAME_MODULES), "gpu": set(SAME_MODULES.values())}
FIRST_PARTY = ("feature_store", "models", "pipelines", "services")

pytestmark = pytest.mark.slow

Report = dict[str, Any]


@pytest.fixture(scope="module")
def package_index() -> None:
    probe = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "tensorflow", "--retries", "1"],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        last_line = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"the package index is unreachable, so pip cannot resolve the installs ({last_line})")


@pytest.fixture(scope="module")
def resolved(package_index: None, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Report]:
    """pip's report for the Makefile's install of a variant, resolved once per variant."""
    reports: dict[str, Report] = {}

    def report(variant: str) -> Report:
        if variant not in reports:
            reports[variant] = _resolve(f"{variant},test", tmp_path_factory.mktemp(variant) / "report.json")
        return reports[variant]

    return report


def _resolve(extras: str, report: Path) -> Report:
    """pip's report of what the Makefile's install command would install into an empty venv."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), "-c", "constraints.txt", "-e", f".[{extras}]"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-3000:]}"
    return json.loads(report.read_text())


def _installed(report: Report) -> set[str]:
    return {canonicalize_name(item["metadata"]["name"]) for item in report["install"]}


def _required_by(report: Report, extras: set[str]) -> set[str]:
    """The distributions of `report` that `recsys[extras]` needs: its requirements' closure, markers
    evaluated here (where pip resolved). With every version pinned by constraints.txt, this is what
    pip resolves for `recsys[extras]` alone, without a second resolution."""
    metadata = {canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in report["install"]}
    todo, seen = [("recsys", frozenset(extras))], set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        for spec in metadata[name].get("requires_dist", []):
            requirement = Requirement(spec)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": extra}) for extra in wanted | {""}):
                todo.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return {name for name, _ in seen}


def _image_extras(variant: str) -> set[str]:
    """The extras infra/Dockerfile's `pip install` names, for the build argument VARIANT=variant."""
    install = re.search(r"pip install .*\.\[([^\]]*)\]", (ROOT / "infra/Dockerfile").read_text())
    assert install, "infra/Dockerfile installs no extra"
    return set(install.group(1).replace("${VARIANT}", variant).split(","))


def _module_level_imports() -> dict[str, str]:
    """Third-party top-level module → a file of the project's packages that imports it at module
    level (not inside a function, an `if TYPE_CHECKING:` or a `try:` fence)."""
    found: dict[str, str] = {}
    for package in FIRST_PARTY:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for top in (name.split(".")[0] for name in names):
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY and top != "__future__":
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize(("variant", "other"), [("cpu", "gpu"), ("gpu", "cpu")])
def test_each_variant_installs_only_its_own_tensorflow_and_faiss(
    variant: str, other: str, resolved: Callable[[str], Report]
) -> None:
    installed = _installed(resolved(variant))
    assert PACKAGES[variant] <= installed
    assert not PACKAGES[other] & installed


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_the_image_install_holds_every_module_level_import(variant: str, resolved: Callable[[str], Report]) -> None:
    image = _required_by(resolved(variant), _image_extras(variant))
    assert PACKAGES[variant] <= image
    # Which distribution provides a module, read from this environment (either variant's).
    providers = packages_distributions()
    swapped = {**SAME_MODULES, **{gpu: cpu for cpu, gpu in SAME_MODULES.items()}}
    missing = []
    for module, path in _module_level_imports().items():
        names = {canonicalize_name(name) for name in providers.get(module, [])}
        assert names, f"{path} imports {module}, which no distribution installed here provides"
        if not (names | {swapped[n] for n in names if n in swapped}) & image:
            missing.append(f"{module} ({'/'.join(sorted(names))}, imported by {path})")
    assert not missing, f"the image's install ({variant}) lacks: {', '.join(missing)}"
