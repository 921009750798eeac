"""The file source's split order: the event log's files in path order (oldest hour first).

Flink's file source hands its pending files to the reader last-in first-out
(`SimpleSplitAssigner`) or in hash order (`LocalityAwareSplitAssigner`, the default), and PyFlink
offers no other: `FileSourceBuilder.set_split_assigner` takes a Java `FileSplitAssigner.Provider`,
and Flink 2.3 ships no provider that orders splits. So a job started on a backlog (its first
start, a start without --resume, a restart after an outage, a log that stalled) could read a later
hour before an earlier one, whose events the watermark then made too late. `PathOrderedSplitAssigner`
(java/, ~50 lines) hands out the pending splits sorted by path: the log's partitions
(`dt=YYYY-MM-DD/hr=HH/`) oldest first, and within one the files in the order they were opened.

Its class is in the job's own jar (`pipelines.flink.jvm`, which says what happens without a JDK).
"""

from __future__ import annotations

from pyflink.datastream.connectors.file_system import FileSplitAssignerProvider

from pipelines.flink.jvm import jvm_class

CLASS = "recsys.flink.PathOrderedSplitAssigner"


def path_ordered_assigner() -> FileSplitAssignerProvider:
    """The assigner's provider for `FileSourceBuilder.set_split_assigner` (the job's jar must be
    added: `jvm.add_job_jar`)."""
    return FileSplitAssignerProvider(jvm_class(f"{CLASS}$Provider")())
