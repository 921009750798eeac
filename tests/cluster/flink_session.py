"""A Flink session cluster on loopback: one jobmanager and task managers started from apache-flink's
own `bin/jobmanager.sh` / `bin/taskmanager.sh start-foreground`, each in its own process group so
a task manager can be killed like a lost machine and the whole cluster always torn down."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pyflink
import yaml

from feature_store.redis_server import free_port

FLINK_HOME = Path(pyflink.__file__).parent


class FlinkSession:
    """Config in `work/conf` (free ports, small memory, `io.tmp.dirs` under `work/tmp` so what a
    task manager unpacks can be inspected), logs in `work/log`."""

    def __init__(self, work: Path, slots: int = 1) -> None:
        self.work = work
        self.rest_port = free_port()
        self.jobmanager: subprocess.Popen[bytes] | None = None
        self.taskmanagers: list[subprocess.Popen[bytes]] = []
        self._write_conf(slots)

    @property
    def conf_dir(self) -> Path:
        return self.work / "conf"

    @property
    def tmp_dir(self) -> Path:
        return self.work / "tmp"

    @property
    def env(self) -> dict[str, str]:
        """What `flink` and the daemons need to find this cluster's config (the CLI reads the REST
        address from it)."""
        return {**os.environ, "FLINK_HOME": str(FLINK_HOME), "FLINK_CONF_DIR": str(self.conf_dir),
                "FLINK_LOG_DIR": str(self.work / "log"), "FLINK_PID_DIR": str(self.work)}

    def _write_conf(self, slots: int) -> None:
        self.conf_dir.mkdir(parents=True)
        self.tmp_dir.mkdir()
        (self.work / "log").mkdir()
        for properties in (FLINK_HOME / "conf").glob("log4j*.properties"):
            shutil.copy(properties, self.conf_dir)
        shipped = yaml.safe_load((FLINK_HOME / "conf" / "config.yaml").read_text())
        conf: dict[str, Any] = {
            "env": shipped["env"],  # the JVM flags (--add-opens ...) Java 17 needs
            "jobmanager": {"bind-host": "127.0.0.1", "rpc": {"address": "127.0.0.1", "port": free_port()},
                           "memory": {"process": {"size": "800m"}}},
            "taskmanager": {"bind-host": "127.0.0.1", "host": "127.0.0.1", "numberOfTaskSlots": slots,
                            "memory": {"process": {"size": "1200m"}}},
            "rest": {"address": "127.0.0.1", "bind-address": "127.0.0.1", "port": self.rest_port},
            "io": {"tmp": {"dirs": str(self.tmp_dir)}},
        }
        (self.conf_dir / "config.yaml").write_text(yaml.safe_dump(conf))

    def start(self, timeout_s: float = 120.0) -> "FlinkSession":
        self.jobmanager = self._daemon("jobmanager.sh", "jobmanager")
        self.start_taskmanager(timeout_s)
        return self

    def start_taskmanager(self, timeout_s: float = 120.0) -> None:
        """Start one more task manager and wait until the jobmanager counts it."""
        wanted = len([tm for tm in self.taskmanagers if tm.poll() is None]) + 1
        self.taskmanagers.append(self._daemon("taskmanager.sh", f"taskmanager-{len(self.taskmanagers)}"))
        self.wait_for(lambda: self.rest("/overview")["taskmanagers"] >= wanted, f"{wanted} task manager(s)", timeout_s)

    def kill_taskmanager(self) -> None:
        """SIGKILL the newest task manager's process group: its JVM and Python workers die at once."""
        kill_group(self.taskmanagers[-1], signal.SIGKILL)

    def _daemon(self, script: str, name: str) -> subprocess.Popen[bytes]:
        with (self.work / "log" / f"{name}.out").open("wb") as out:
            return subprocess.Popen([str(FLINK_HOME / "bin" / script), "start-foreground"], env=self.env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def rest(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.rest_port}{path}", timeout=5) as reply:
            return json.load(reply)

    def wait_for(self, check, what: str, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.jobmanager is not None and self.jobmanager.poll() is None, self.log_tail()
            try:
                if check():
                    return
            except OSError:
                pass  # the REST endpoint is not up yet
            time.sleep(0.5)
        raise TimeoutError(f"no {what} in {timeout_s}s; {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"== {log.name}\n{log.read_text(errors='replace')[-chars:]}"
                         for log in sorted((self.work / "log").glob("*.log")))

    def stop(self) -> None:
        """Tear everything down: SIGTERM each process group, SIGKILL whatever is left."""
        processes = [p for p in [*self.taskmanagers, self.jobmanager] if p is not None]
        for process in processes:
            kill_group(process, signal.SIGTERM, wait_s=20)


def kill_group(process: subprocess.Popen[bytes], sig: signal.Signals, wait_s: float = 30) -> None:
    """Signal the process group, give its leader `wait_s` to exit, then SIGKILL the group (so no
    Python worker or forked child outlives it)."""
    for attempt, wait in ((sig, wait_s), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, attempt)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            pass
