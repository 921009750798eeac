"""The job's own JVM classes (`java/`): compiled once into a jar, added to the job, and looked up.

- `recsys.flink.PathOrderedSplitAssigner`: the file source's split order (`ordered_splits`);
- `recsys.flink.WatermarkFloor`: keeps the highest watermark in the checkpoint and restores it
  (`job.keyed_in_jvm`), so a restart makes the same "too late" decisions as the run it resumes.

PyFlink offers neither: a split assigner is a Java `FileSplitAssigner.Provider`, and a Python
function has no operator state. The jar is compiled on first use with the JDK's `javac` against
PyFlink's own jars, cached under `<cache_dir>/recsys-flink-<hash of the sources>.jar`, and added to
the job (`pipeline.jars`: uploaded with the job to a cluster). Without `javac` (a JRE-only machine)
the job runs without both and logs a warning saying what that costs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pyflink
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.java_gateway import get_gateway

log = logging.getLogger(__name__)

SOURCES = sorted((Path(__file__).parent / "java").glob("*.java"))


def job_jar(cache_dir: Path) -> Path | None:
    """The jar of `SOURCES`, compiled on first use; None when no `javac` is on PATH."""
    digest = hashlib.sha256(b"".join(source.read_bytes() for source in SOURCES)).hexdigest()[:16]
    jar = Path(cache_dir) / f"recsys-flink-{digest}.jar"
    if jar.exists():
        return jar
    javac, jar_tool = shutil.which("javac"), shutil.which("jar")
    if javac is None or jar_tool is None:
        return None
    flink_lib = Path(pyflink.__file__).parent / "lib"
    classpath = os.pathsep.join(str(p) for name in ("flink-connector-files-*.jar", "flink-dist-*.jar")
                                for p in flink_lib.glob(name))
    jar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=jar.parent) as build:
        classes = Path(build) / "classes"
        subprocess.run([javac, "--release", "17", "-nowarn", "-cp", classpath, "-d", str(classes),
                        *(str(source) for source in SOURCES)], check=True, capture_output=True)
        built = Path(build) / "recsys-flink.jar"
        subprocess.run([jar_tool, "cf", str(built), "-C", str(classes), "."], check=True, capture_output=True)
        os.replace(built, jar)  # atomic: two jobs starting at once each build, one wins
    return jar


def add_job_jar(env: StreamExecutionEnvironment, cache_dir: Path) -> bool:
    """Adds the jar to `env`; False (and a warning) when it cannot be built here."""
    jar = job_jar(cache_dir)
    if jar is None:
        log.warning("no javac (JDK) on PATH: the job runs without its own JVM classes (docs/speed_layer.md): "
                    "the file source keeps Flink's split order, so on a backlog a later hour may be read first and "
                    "the outcomes of earlier hours counted late; and a restart forgets the watermark, so events "
                    "too late before it may be counted after it")
        return False
    env.add_jars(jar.resolve().as_uri())
    return True


def jvm_class(name: str) -> Any:
    """The class `name` (package.Class, or package.Class$Inner) through the Py4J gateway."""
    found = get_gateway().jvm
    for part in name.split("."):
        found = getattr(found, part)
    return found
