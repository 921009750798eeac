"""Line numbers for rows read from text files, found after the fact for a few rows.

Spark's text and JSON readers do not expose a row's line number, and numbering every line of a
large log would cost a sort of all of it. When only a few rows need one (rejects), the files that
hold them are read again, each by a single executor task that streams the file and numbers its
lines; the numbered lines are joined back to the rows on (file, line text), and identical lines of
one file are told apart by their order. Memory stays bounded: no file is held whole, and nothing
but the list of those files reaches the driver.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

NUMBERED_LINE_SCHEMA = "source_file string, line_number long, raw string"


def numbered_lines(uri: str) -> Iterator[tuple[str, int, str]]:
    """(uri, 1-based line number, line without its terminator) for every line of the file at `uri`
    (a local path or a URI pyarrow can open: file:, s3:, gs:, hdfs:). Lines end at \\n, \\r\\n or \\r,
    as in Spark's text reader."""
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri) if ":" in uri else (fs.LocalFileSystem(), uri)
    with filesystem.open_input_stream(path) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline=None)
        for number, line in enumerate(text, start=1):
            yield uri, number, line[:-1] if line.endswith("\n") else line


def with_line_numbers(rows: DataFrame, file_column: str = "source_file", text_column: str = "raw") -> DataFrame:
    """`rows` plus `line_number`: the 1-based line of `text_column` in the file `file_column`
    (null only when the line cannot be found again, e.g. the file changed since it was read)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    spark = rows.sparkSession
    files = [row[0] for row in rows.select(file_column).distinct().collect()]
    if not files:
        return rows.withColumn("line_number", F.lit(None).cast("long"))
    tasks = min(len(files), spark.sparkContext.defaultParallelism * 4)
    lines = spark.createDataFrame(spark.sparkContext.parallelize(files, tasks).flatMap(numbered_lines), NUMBERED_LINE_SCHEMA)
    lines = lines.withColumnRenamed("source_file", file_column).withColumnRenamed("raw", text_column)
    keys = [file_column, text_column]
    wanted = lines.join(rows.select(*keys).distinct(), keys, "left_semi")
    # Identical lines of one file give identical rows, so pairing them by order is exact.
    occurrence = Window.partitionBy(*keys)
    numbered = wanted.withColumn("_occurrence", F.row_number().over(occurrence.orderBy("line_number")))
    ranked = rows.withColumn("_occurrence", F.row_number().over(occurrence.orderBy(F.lit(0))))
    return ranked.join(numbered, [*keys, "_occurrence"], "left").drop("_occurrence")
