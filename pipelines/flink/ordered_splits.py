"""The file source's split order: the event log's files in path order (oldest hour first).

Flink's file source hands its pending files to the reader last-in first-out
(`SimpleSplitAssigner`) or in hash order (`LocalityAwareSplitAssigner`, the default), and PyFlink
offers no other: `FileSourceBuilder.set_split_assigner` takes a Java `FileSplitAssigner.Provider`,
and Flink 2.3 ships no provider that orders splits. So a job started on a backlog (its first
start, a start without --resume, a restart after an outage, a log that stalled) could read a later
hour before an earlier one, whose events the watermark then made too late. `PathOrderedSplitAssigner`
(java/, ~50 lines) hands out the pending splits sorted by path: the log's partitions
(`dt=YYYY-MM-DD/hr=HH/`) oldest first, and within one the files in the order they were opened.

The jar is compiled on first use with the JDK's `javac` against PyFlink's own jars, cached under
`<cache_dir>/<hash of the source>.jar`, and added to the job (`pipeline.jars`: uploaded with the
job to a cluster). Without `javac` (a JRE-only machine) the job keeps Flink's default order and
logs a warning saying what that costs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pyflink
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.connectors.file_system import FileSplitAssignerProvider
from pyflink.java_gateway import get_gateway

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "java" / "PathOrderedSplitAssigner.java"
CLASS = "recsys.flink.PathOrderedSplitAssigner"


def path_ordered_jar(cache_dir: Path) -> Path | None:
    """The assigner's jar, compiled on first use; None when no `javac` is on PATH."""
    source = SOURCE.read_bytes()
    jar = Path(cache_dir) / f"path-ordered-splits-{hashlib.sha256(source).hexdigest()[:16]}.jar"
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
        subprocess.run([javac, "--release", "17", "-nowarn", "-cp", classpath, "-d", str(classes), str(SOURCE)],
                       check=True, capture_output=True)
        built = Path(build) / "assigner.jar"
        subprocess.run([jar_tool, "cf", str(built), "-C", str(classes), "."], check=True, capture_output=True)
        os.replace(built, jar)  # atomic: two jobs starting at once each build, one wins
    return jar


def path_ordered_assigner(env: StreamExecutionEnvironment, cache_dir: Path) -> FileSplitAssignerProvider | None:
    """Adds the assigner's jar to `env` and returns its provider for `FileSourceBuilder.set_split_assigner`;
    None (and a warning) when it cannot be built here."""
    jar = path_ordered_jar(cache_dir)
    if jar is None:
        log.warning("no javac (JDK) on PATH: the file source keeps Flink's split order, so on a backlog a later "
                    "hour may be read first and the outcomes of earlier hours counted late (docs/speed_layer.md)")
        return None
    env.add_jars(jar.resolve().as_uri())
    package, name = CLASS.rsplit(".", 1)
    java_package = get_gateway().jvm
    for part in package.split("."):
        java_package = getattr(java_package, part)
    return FileSplitAssignerProvider(getattr(java_package, f"{name}$Provider")())
