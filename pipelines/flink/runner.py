"""Run the speed-layer job as a child process and find its retained checkpoints.

`StreamJob` is what `make run` (through `recsys run`), the tests and the freshness benchmark use:
it starts `python -m pipelines.flink.job` in its own process group, stops it cleanly (SIGTERM:
the job cancels itself, its checkpoints retained) or kills it like a crash (SIGKILL to the group:
the Python driver, its JVM and the Python workers all die at once).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO


def completed_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Every complete `chk-N` directory (it has `_metadata`) under any job id, oldest first."""
    found = [meta.parent for meta in Path(checkpoint_dir).glob("*/chk-*/_metadata")]
    return sorted(found, key=lambda path: (path.stat().st_mtime, int(path.name.split("-")[1])))


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None when there is none yet."""
    checkpoints = completed_checkpoints(checkpoint_dir)
    return checkpoints[-1] if checkpoints else None


class StreamJob:
    """The speed-layer job in a child process (its own process group, so it can be killed whole)."""

    def __init__(
        self,
        state_dir: Path,
        env: dict[str, str] | None = None,
        log_file: Path | None = None,
        checkpoint_dir: Path | None = None,
        code_dir: Path | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.checkpoint_dir = checkpoint_dir or self.state_dir / "flink-checkpoints"
        self.env = {**os.environ, **(env or {})}
        self.log_file = log_file or self.state_dir / "logs" / "stream.log"
        self.code_dir = code_dir  # the job's code from another checkout (the benchmark's "before"); default ours
        if code_dir is not None:  # the Python workers find the job's modules there too
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_dir), self.env.get("PYTHONPATH")]))
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, resume: bool = False, from_checkpoint: Path | None = None) -> "StreamJob":
        """Start the job: from nothing, from the latest retained checkpoint (`resume`), or from
        `from_checkpoint` (a `chk-N` directory)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_file.open("ab")
        command = [sys.executable, "-m", "pipelines.flink.job", "--state-dir", str(self.state_dir.resolve())]
        if from_checkpoint is not None:
            command += ["--from-checkpoint", str(Path(from_checkpoint).resolve())]
        self.process = subprocess.Popen(
            command + (["--resume"] if resume else []),
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=self.env, start_new_session=True, cwd=self.code_dir,
        )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 30.0) -> None:
        """Clean stop: the job cancels itself; whatever is left after `timeout_s` is killed."""
        if not self.running:
            return self._close_log()
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> None:
        """Crash the job: SIGKILL its whole process group (driver, JVM, Python workers)."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        self._close_log()

    def wait_for_checkpoint(self, newer_than: float, timeout_s: float = 60.0) -> Path:
        """Block until a checkpoint completed after `newer_than` (a time.time() value)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            latest = latest_checkpoint(self.checkpoint_dir)
            if latest is not None and (latest / "_metadata").stat().st_mtime > newer_than:
                return latest
            if not self.running:
                raise RuntimeError(f"stream job exited; see {self.log_file}")
            time.sleep(0.2)
        raise TimeoutError(f"no checkpoint completed under {self.checkpoint_dir} in {timeout_s}s")

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
