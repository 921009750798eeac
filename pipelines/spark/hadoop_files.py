"""Small files beside Spark outputs (manifests), written through Hadoop's FileSystem so the same
code works on local paths, HDFS and object stores."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def write_text(spark: SparkSession, uri: str, text: str) -> None:
    """Write `text` (UTF-8) to `uri`, replacing it."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    filesystem = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    stream = filesystem.create(path, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()

