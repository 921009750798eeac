"""Deployment files can't be run here (no Docker engine), so check what can be checked: the YAML
parses into the expected shape, and every `recsys` command line they name parses against the
real CLI (command path and options), and every file they reference exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import click
import pytest
import typer.main
import yaml

from services.cli import app

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"


def parse_recsys_args(args: list[str]) -> None:
    """Resolve `args` to a leaf command of the real CLI and parse its options; raise if invalid."""
    command: click.Command = typer.main.get_command(app)
    while isinstance(command, click.Group):
        name, *args = args
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, f"`recsys {name}` does not exist"
        command = sub
    command.make_context(command.name, list(args))


def compose_commands(compose: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    for name, service in compose["services"].items():
        if service.get("image", "").startswith("recsys"):
            yield name, service["command"]


def k8s_commands(document: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    spec = document["spec"]
    if document["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec["template"]["spec"]
    for container in pod.get("initContainers", []) + pod["containers"]:
        if container["image"].startswith("recsys"):
            yield container["name"], container["args"]


def test_compose_file_services_run_real_commands() -> None:
    compose = yaml.safe_load((INFRA / "docker-compose.yaml").read_text())
    assert {"redis", "api", "stream"} <= set(compose["services"])
    commands = dict(compose_commands(compose))
    assert commands, "no recsys services found"
    for name, args in commands.items():
        parse_recsys_args(args)
    assert (ROOT / compose["x-recsys"]["build"]["dockerfile"]).is_file()


K8S_FILES = sorted((INFRA / "k8s").glob("*.yaml"))


@pytest.mark.parametrize("path", K8S_FILES, ids=[p.name for p in K8S_FILES])
def test_kubernetes_manifests_parse_and_name_real_commands(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        assert {"apiVersion", "kind", "metadata"} <= set(document)
        if document["kind"] in {"Deployment", "CronJob"}:
            for _, args in k8s_commands(document):
                parse_recsys_args(args)


def test_dockerfile_copies_existing_paths_and_runs_the_cli() -> None:
    dockerfile = (INFRA / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    assert 'ENTRYPOINT ["recsys"]' in dockerfile
    parse_recsys_args(["serve"])


@pytest.mark.parametrize("script", ["spark/submit.sh", "flink/run.sh"])
def test_submit_scripts_point_at_real_jobs(script: str) -> None:
    text = (INFRA / script).read_text()
    if "flink" in script:
        assert (ROOT / "pipelines/flink/job.py").is_file()
    else:
        jobs = {p.stem for p in (ROOT / "pipelines/spark/jobs").glob("*.py")} - {"__init__"}
        named = set(re.search(r"# Jobs: (.*)\(", text).group(1).replace(",", " ").split())
        assert named <= jobs
