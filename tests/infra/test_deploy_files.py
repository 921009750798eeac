"""Deployment files can't be run here (no Docker engine), so check what can be checked: the YAML
parses into the expected shape, and every `recsys` command line they name parses against the
real CLI (command path and options), every file they reference exists, and every environment
key they set is a real setting (with a value the settings accept)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator

import click
import pytest
import typer.main
import yaml

from feature_store.settings import Settings
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


def pod_spec(document: dict[str, Any]) -> dict[str, Any] | None:
    """The spec of the pods a manifest runs (a workload's pod template), None for other kinds."""
    if document["kind"] == "Pod":
        return document["spec"]
    spec = document.get("spec", {})
    if document["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"] if "template" in spec else None


def containers(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """A Deployment's or CronJob's containers, init containers first."""
    pod = pod_spec(document)
    assert pod is not None, document["kind"]
    for container in pod.get("initContainers", []) + pod["containers"]:
        yield container["name"], container


def k8s_commands(document: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    for name, container in containers(document):
        if container["image"].startswith("recsys"):
            yield name, container["args"]


#: Environment keys read outside the RECSYS_ settings tree (feature_store/settings.py reads both).
NON_SETTING_KEYS = {"REDIS_URL", "RECSYS_CONFIG"}


def check_setting_keys(env: dict[str, Any], where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every key names a field of `Settings` (nested with `__`), and the values validate."""
    for key in env:
        if key in NON_SETTING_KEYS:
            continue
        assert key.startswith("RECSYS_"), f"{where}: {key} is not a RECSYS_ setting"
        model: Any = Settings
        for part in key.removeprefix("RECSYS_").lower().split("__"):
            assert model is not None and part in model.model_fields, f"{where}: {key} is not a setting"
            model = model.model_fields[part].annotation
            model = model if isinstance(model, type) and hasattr(model, "model_fields") else None
    for name in [n for n in os.environ if n.startswith("RECSYS_") or n == "REDIS_URL"]:
        monkeypatch.delenv(name)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    Settings()  # the values parse (types, ranges) like any deployment's


def test_compose_file_services_run_real_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert {"redis", "api", "stream", "scheduler"} <= set(compose["services"])
    commands = dict(compose_commands(compose))
    assert commands, "no recsys services found"
    for name, args in commands.items():
        parse_recsys_args(args)
        check_setting_keys(compose["services"][name].get("environment", {}), f"compose {name}", monkeypatch)
    assert commands["scheduler"] == ["scheduler"] and commands["train"] == ["train", "run"]
    assert commands["stream"] == ["stream", "run", "--resume"]  # a restart keeps the job's state
    shares = {name: compose["services"][name]["environment"].get("RECSYS_LEARNER__SHARE") for name in ("api", "learner")}
    assert shares["api"] == shares["learner"] and float(shares["api"]) > 0  # the API assigns the learner's users
    assert (ROOT / compose["x-recsys"]["build"]["context"] / compose["x-recsys"]["build"]["dockerfile"]).is_file()
    assert not (INFRA / "docker-compose.yaml").exists(), "one compose file, at the top level"


K8S_FILES = sorted((INFRA / "k8s").glob("*.yaml"))


@pytest.mark.parametrize("path", K8S_FILES, ids=[p.name for p in K8S_FILES])
def test_kubernetes_manifests_parse_and_name_real_commands(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        assert {"apiVersion", "kind", "metadata"} <= set(document)
        if document["kind"] == "ConfigMap":
            check_setting_keys(document["data"], f"{path.name} ConfigMap", monkeypatch)
        if document["kind"] in {"Deployment", "CronJob"}:
            for name, args in k8s_commands(document):
                parse_recsys_args(args)
            for name, env in k8s_env(document):
                check_setting_keys(env, f"{path.name} {name}", monkeypatch)


def k8s_env(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, str]]]:
    for name, container in containers(document):
        yield name, {item["name"]: item.get("value", "") for item in container.get("env", [])}


def test_kubernetes_defines_what_its_pods_refer_to() -> None:
    documents = [d for path in K8S_FILES for d in yaml.safe_load_all(path.read_text())]
    names = {(d["kind"], d["metadata"]["name"]) for d in documents}
    assert {("Service", "recsys-redis"), ("ConfigMap", "recsys-config"), ("PersistentVolumeClaim", "recsys-state")} <= names
    config = next(d["data"] for d in documents if d["kind"] == "ConfigMap")
    assert config["REDIS_URL"].startswith("redis://recsys-redis:") and float(config["RECSYS_LEARNER__SHARE"]) > 0
    secret_users: set[str] = set()
    for document in documents:  # the secret is required: without API keys the API takes writes from anyone
        if document["kind"] in {"Deployment", "CronJob"}:
            for source in (src for _, container in containers(document) for src in container.get("envFrom", [])):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] == "recsys-secrets"
                    assert source["secretRef"].get("optional") is False, document["metadata"]["name"]
                    secret_users.add(document["metadata"]["name"])
    assert {"recsys-api", "recsys-training"} <= secret_users


def test_kubernetes_does_not_pull_the_local_image_from_docker_hub() -> None:
    """`recsys:latest` is built here, not published: under the default pull policy of a `latest`
    tag (Always) every pod would try docker.io/library/recsys and fail."""
    for path in K8S_FILES:
        for document in yaml.safe_load_all(path.read_text()):
            if document["kind"] not in {"Deployment", "CronJob"}:
                continue
            for name, container in containers(document):
                if container["image"].startswith("recsys"):
                    assert container.get("imagePullPolicy") in {"IfNotPresent", "Never"}, f"{path.name} {name}"


def test_kubernetes_pods_get_no_service_link_variables() -> None:
    """By default the kubelet gives every pod Docker-link variables for each Service in the
    namespace: RECSYS_REDIS_PORT=tcp://…, RECSYS_API_SERVICE_HOST and so on for recsys-redis and
    recsys-api. They look like settings, and the CLI warns about each unknown RECSYS_ variable:
    14 false warnings per pod that hide a real misspelling. Nothing here reads them (REDIS_URL
    names the Service by its DNS name)."""
    pods = 0
    for path in K8S_FILES:
        for document in yaml.safe_load_all(path.read_text()):
            pod = pod_spec(document)
            if pod is not None:
                pods += 1
                assert pod.get("enableServiceLinks") is False, f"{path.name} {document['metadata']['name']}"
    assert pods >= 5  # api, stream, learner, redis, training


def _is_false(value: object) -> bool:
    return str(value).lower() in {"false", "0", "no", "off"}


def test_compose_trains_for_the_learner_it_deploys() -> None:
    """The learner learns only while the API serves the ranker, and the recall blend (on by default)
    often serves its own order instead (docs/online_learning.md): where the learner runs, the
    processes that train fit no blend."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    commands = dict(compose_commands(compose))
    assert ["learn", "online"] in commands.values()
    trainers = [name for name, args in commands.items() if args[:1] == ["scheduler"] or args[:2] == ["train", "run"]]
    assert trainers
    for name in trainers:
        environment = compose["services"][name].get("environment", {})
        assert _is_false(environment.get("RECSYS_TRAINING__BLEND")), f"compose {name} fits the blend"


def test_kubernetes_trains_for_the_learner_it_deploys() -> None:
    documents = [d for path in K8S_FILES for d in yaml.safe_load_all(path.read_text())]
    config_maps = {d["metadata"]["name"]: d["data"] for d in documents if d["kind"] == "ConfigMap"}
    workloads = [d for d in documents if d["kind"] in {"Deployment", "CronJob"}]
    assert ["learn", "online"] in [args for d in workloads for _, args in k8s_commands(d)]
    trainers = 0
    for document in workloads:
        for name, container in containers(document):
            if container.get("args", [])[:2] != ["train", "run"]:
                continue
            trainers += 1
            env: dict[str, Any] = {}
            for source in container.get("envFrom", []):
                env.update(config_maps.get(source.get("configMapRef", {}).get("name"), {}))
            env.update(dict(k8s_env(document))[name])
            assert _is_false(env.get("RECSYS_TRAINING__BLEND")), f"{document['metadata']['name']} {name} fits the blend"
    assert trainers


def test_kubernetes_runs_the_training_dag_on_a_schedule() -> None:
    jobs = [d for path in K8S_FILES for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "CronJob"]
    commands = [args for job in jobs for _, args in k8s_commands(job)]
    assert ["train", "run", "--trigger", "schedule"] in commands
    assert all(job["spec"]["concurrencyPolicy"] == "Forbid" for job in jobs)


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

