"""Experiments stored durably under the state directory and mirrored in Redis.

Files are the record: `<state_dir>/experiments/<id>.json`, written to a temp file, fsynced and
renamed, under an exclusive lock on `<state_dir>/experiments/.lock` while a writer checks and
writes (two workers creating overlapping experiments at once: the second sees the first).
Redis is the mirror every worker reads on the request path: hash `P:x:{x}:defs` (id -> JSON) and
token `P:x:{x}:version`, a new random value on every write in the same transaction (the hash tag `{x}`
keeps both in one slot of a Redis Cluster, where the transaction runs on that slot's master). A
reader does one GET of the token per call and reloads the hash only when it changed, so all
workers serve a change from their next request. A
Redis that lost the mirror (flushed, replaced) is refilled from the files; a Redis that is
unreachable leaves a worker on its last copy (a process that has none reads the files), and a
write it cannot mirror is undone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from feature_store.redis_client import RedisClient, on_slot
from feature_store.schemas import error_message
from services.experiments.errors import ExperimentStoreUnavailableError, InvalidExperimentError, UnknownExperimentError
from services.experiments.model import Experiment

log = logging.getLogger(__name__)


class ExperimentStore:
    """Experiments in files (durable) and in Redis (shared by every worker)."""

    def __init__(self, root: Path, client: RedisClient, key_prefix: str) -> None:
        self.root = Path(root)
        self.client = client
        self._defs = f"{key_prefix}:x:{{x}}:defs"
        self._version = f"{key_prefix}:x:{{x}}:version"
        self._seen_version: bytes | None = None
        self._cache: dict[str, Experiment] = {}

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the writers' lock (check-then-write is atomic across workers and processes)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def from_files(self) -> dict[str, Experiment]:
        """Every stored experiment, read from the files. A file that does not read (edited by hand,
        written by an older version) is logged and left out: it must not stop the other
        experiments, the mirror or the requests that read it."""
        if not self.root.is_dir():
            return {}
        read = (_readable(f"experiment file {path}", path.read_bytes()) for path in sorted(self.root.glob("*.json")))
        return {experiment.id: experiment for experiment in read if experiment is not None}

    def save(self, experiment: Experiment) -> None:
        """Write one experiment durably, then mirror it (call under `locked`). When Redis does not
        answer, the file is put back as it was: a change the workers cannot see is not made (a
        stopped experiment that every worker keeps serving, a failed create that goes live at the
        next write) and the caller gets `ExperimentStoreUnavailableError` (503)."""
        text = experiment.model_dump_json(indent=2)
        try:
            Experiment.model_validate_json(text)  # what is stored must read back
        except ValueError as exc:
            raise InvalidExperimentError(f"experiment {experiment.id!r} would not read back: {error_message(exc)}") from None
        path = self._path(experiment.id)
        previous = path.read_bytes() if path.exists() else None
        self._write(path, text.encode())
        try:
            self.mirror()
        except redis.RedisError as exc:
            if previous is None:
                path.unlink()
            else:
                self._write(path, previous)
            try:  # a timeout may come after Redis applied the transaction: put the files' state back there too
                self.mirror()
            except redis.RedisError:
                pass
            raise ExperimentStoreUnavailableError(
                f"{redis_failure(exc)}: experiment {experiment.id!r} was not changed; retry when it does") from None

    def sync(self) -> None:
        """Mirror the files into Redis now (`ExperimentStoreUnavailableError` when Redis does not answer)."""
        try:
            self.mirror()
        except redis.RedisError as exc:
            raise ExperimentStoreUnavailableError(f"{redis_failure(exc)}; retry when it does") from None

    def _write(self, path: Path, data: bytes) -> None:
        """`data` at `path` atomically and durably (temp file, fsync, rename, fsync the folder)."""
        self.root.mkdir(parents=True, exist_ok=True)
        temp = self.root / f".{path.name}.tmp"
        with temp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        directory = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def mirror(self) -> None:
        """Copy every file into Redis with a new version token (one transaction)."""
        experiments = self.from_files()
        on_slot(self.client, self._defs, lambda conn: self._replace_mirror(conn, experiments))

    def _replace_mirror(self, conn: redis.Redis, experiments: dict[str, Experiment]) -> None:
        pipe = conn.pipeline(transaction=True)
        pipe.delete(self._defs)
        if experiments:
            pipe.hset(self._defs, mapping={e.id: e.model_dump_json() for e in experiments.values()})
        # A fresh token, not a counter: a Redis that lost its data would count again from 1 and a
        # reader that saw 1 before would keep its stale copy.
        pipe.set(self._version, uuid.uuid4().hex)
        pipe.execute()

    def all(self) -> dict[str, Experiment]:
        """Every experiment as the mirror has it (refilled from the files if Redis lost it)."""
        try:
            version = self.client.get(self._version)
            if version is None:
                self.mirror()
                version = self.client.get(self._version)
            if version != self._seen_version:
                read = {k.decode(): _readable(f"experiment {k.decode()} in the Redis mirror", v)
                        for k, v in self.client.hgetall(self._defs).items()}
                self._cache = {k: experiment for k, experiment in read.items() if experiment is not None}
                self._seen_version = version
        except redis.RedisError as exc:
            if self._seen_version is None:  # nothing read yet (a CLI command): the files are the record
                log.warning("experiments mirror unreachable (%s): reading the files", exc)
                return self.from_files()
            log.warning("experiments mirror unreachable (%s): using the last copy", exc)
        return dict(self._cache)

    def exists(self, experiment_id: str) -> bool:
        """Whether a file holds this id, readable or not (ids are never reused)."""
        return self._path(experiment_id).exists()

    def _path(self, experiment_id: str) -> Path:
        return self.root / f"{experiment_id}.json"

    def get(self, experiment_id: str) -> Experiment:
        try:
            return self.all()[experiment_id]
        except KeyError:
            raise UnknownExperimentError(f"no experiment {experiment_id!r}") from None


def redis_failure(exc: Exception) -> str:
    """What Redis did: not answer (down, timed out) or answer with an error (no permission, out of memory)."""
    if isinstance(exc, redis.ResponseError):
        return f"Redis refused the command ({exc})"
    return f"Redis did not answer ({exc})"


def _readable(what: str, data: bytes) -> Experiment | None:
    """The experiment in `data`, or None (logged) when it does not read: edited by hand, or stored by
    an older version whose bounds were wider. One such entry must not stop the others."""
    try:
        return Experiment.model_validate_json(data)
    except ValueError as exc:
        log.error("%s left out: %s", what, error_message(exc))
        return None
