"""The speed-layer job: event log (file source, continuous) -> attributed counts in Redis.

Runs in a local mini-cluster inside this process by default (`recsys stream run`, or
`python -m pipelines.flink.job`), and unchanged on a cluster with
`flink run -py pipelines/flink/job.py -- --state-dir /shared/recsys` (settings from `RECSYS_*`
environment variables or `RECSYS_CONFIG`; the Redis URL must then be set).

Graph::

    FileSource(text lines, monitor_continuously)            only complete (visible) files, in path
                                                            order (oldest hour first: ordered_splits)
      -> ParseEvents (flat_map)               malformed and far-future lines logged, skipped
      -> event-time watermarks (bounded out-of-orderness)    in the JVM (keyed_in_jvm); the highest
                                                            one checkpointed and restored (WatermarkFloor)
      -> key_by (user, item)                                  in the JVM
      -> Attribute (KeyedProcessFunction)     impressions and outcomes joined in keyed map state
                                              (TTL) with event-time timers; emits store records
      -> WriteRecords (async I/O)             records batched into pipelined round trips of the
                                              feature store's idempotent AttributionStore

The live features (sequences, counts, trending) are the API's to write (`LiveWriter`, on every
posted event): one writer per feature. This job computes only what needs the join.

Checkpoints (exactly-once state, retained on cancellation) go to `settings.flink_checkpoint_dir`;
`--from-checkpoint PATH` or `--resume` (latest retained checkpoint) restores from one.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from pyflink.common import Configuration, Duration, Types, WatermarkStrategy
from pyflink.common.time import Time
from pyflink.datastream import AsyncDataStream, DataStream, KeyedStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.file_system import FileSource, FileSplitAssignerProvider, StreamFormat
from pyflink.java_gateway import get_gateway

from feature_store.linucb_store import context_dim
from feature_store.settings import FlinkSettings, Settings
from pipelines.flink import operators as ops
from pipelines.flink.jvm import add_job_jar, jvm_class
from pipelines.flink.ordered_splits import path_ordered_assigner
from pipelines.flink.runner import latest_checkpoint
from pipelines.flink.sink import WriteRecords

log = logging.getLogger(__name__)


def flink_configuration(settings: Settings, restore_from: Path | None) -> Configuration:
    """Checkpointing, Python bundle and recovery settings, the same locally and on a cluster."""
    flink = settings.flink
    conf = Configuration()
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    conf.set_string("python.fn-execution.bundle.time", str(flink.bundle_time_ms))
    conf.set_string("python.fn-execution.bundle.size", str(flink.bundle_size))
    conf.set_string("execution.checkpointing.interval", f"{flink.checkpoint_interval_ms}ms")
    conf.set_string("execution.checkpointing.mode", flink.checkpoint_mode)
    conf.set_string("execution.checkpointing.dir", settings.flink_checkpoint_dir.resolve().as_uri())
    conf.set_string("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
    conf.set_string("execution.checkpointing.num-retained", "3")
    conf.set_string("pipeline.auto-watermark-interval", "50ms")
    conf.set_string("parallelism.default", str(flink.parallelism))
    if restore_from is not None:
        conf.set_string("execution.state-recovery.path", restore_from.resolve().as_uri())
    return conf


def job_params(settings: Settings, redis_url: str) -> ops.JobParams:
    from feature_store.redis_client import ConnectionSpec

    return ops.JobParams(
        redis=ConnectionSpec.from_settings(settings, redis_url),
        dedup_ttl_s=settings.feature_store.dedup_ttl_s,
        server_impression_ttl_s=settings.feature_store.server_impression_dedup_ttl_s,
        allowed_lateness_ms=settings.flink.allowed_lateness_ms,
        max_future_skew_s=settings.events.max_future_skew_s,
        window_ms=int(settings.attribution.window_s * 1000),
        recent_outcomes=settings.attribution.recent_outcomes,
        linucb_dim=context_dim(),
        linucb_ridge=settings.explore.linucb_ridge,
        writes_in_flight=settings.flink.writes_in_flight,
    )


def build_job(
    env: StreamExecutionEnvironment, events_dir: Path, params: ops.JobParams, flink: FlinkSettings,
    split_order: FileSplitAssignerProvider | None = None, watermark_floor: bool = False,
) -> None:
    """Wire source -> parse -> event time -> (user, item) keys -> attribution -> writes onto `env`.

    `split_order` decides which pending file is read next (`ordered_splits`; None: Flink's default);
    `watermark_floor` restores the checkpoint's watermark on a restore (both need `jvm.add_job_jar`)."""
    events_dir.mkdir(parents=True, exist_ok=True)
    builder = FileSource.for_record_stream_format(StreamFormat.text_line_format(), str(events_dir.resolve()))
    if split_order is not None:
        builder = builder.set_split_assigner(split_order)
    source = builder.monitor_continuously(Duration.of_millis(flink.monitor_interval_ms)).build()
    parsed = (
        env.from_source(source, WatermarkStrategy.no_watermarks(), "event-log")
        .flat_map(ops.ParseEvents(params.max_future_skew_s), ops.PARSED_TYPE_INFO).name("parse")
    )
    watermarks = WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(flink.out_of_orderness_ms))
    keyed = keyed_in_jvm(parsed, watermarks, watermark_floor)
    records = keyed.process(ops.Attribute(params), Types.STRING()).name("attribution")
    # No timeout (0): a per-record timer thread would cost more than the write; Redis calls time out themselves.
    AsyncDataStream.unordered_wait(
        records, WriteRecords(params, params.writes_in_flight), Time.milliseconds(0),
        params.writes_in_flight, Types.STRING(),
    ).name("write")


def keyed_in_jvm(parsed: DataStream, watermarks: WatermarkStrategy, watermark_floor: bool = False) -> KeyedStream:
    """Event time and the (user, item) key of the parse's `(Row(key, record), ts)` records, by the
    JVM's own functions (those PyFlink's `assign_timestamps_and_watermarks` and `key_by` use after
    their Python steps): a record crosses into Python only for the parse and the join, instead of
    also for a timestamp assigner and a key selector. The keyed stream's elements are
    `Row(key, record)`, which PyFlink's keyed operators take as (key, value).

    With `watermark_floor`, `recsys.flink.WatermarkFloor` passes the watermarks on and restores
    the highest from the checkpoint: the generator starts again from nothing after a restore."""
    python_functions = get_gateway().jvm.org.apache.flink.streaming.api.functions.python
    stamped = parsed._j_data_stream.assignTimestampsAndWatermarks(
        watermarks._j_watermark_strategy.withTimestampAssigner(python_functions.eventtime.CustomTimestampAssigner())
    ).name("event-time")
    rows = stamped.map(
        python_functions.eventtime.RemoveTimestampMapFunction(), ops.KEYED_RECORD_TYPE_INFO.get_java_type_info()
    ).name("drop-time")
    if watermark_floor:
        rows = rows.transform("watermark-floor", rows.getType(), jvm_class("recsys.flink.WatermarkFloor")())
    keyed = rows.keyBy(python_functions.KeyByKeySelector(), Types.ROW([Types.STRING()]).get_java_type_info())
    return KeyedStream(keyed, Types.STRING(), parsed)


def run(settings: Settings, redis_url: str, restore_from: Path | None = None) -> None:
    """Run the job until SIGTERM/SIGINT, then cancel it cleanly (its checkpoints are retained)."""
    env = StreamExecutionEnvironment.get_execution_environment(flink_configuration(settings, restore_from))
    own_jar = add_job_jar(env, settings.state_dir / "flink-lib")
    build_job(env, settings.event_log_dir, job_params(settings, redis_url), settings.flink,
              path_ordered_assigner() if own_jar else None, watermark_floor=own_jar)
    client = env.execute_async("recsys-speed-layer")
    log.info("speed layer running (job %s), restored from %s", client.get_job_id(), restore_from)
    stop = _stop_flag()
    while not stop["requested"]:
        status = str(client.get_job_status().result())
        if status in ("FAILED", "CANCELED", "FINISHED"):
            raise RuntimeError(f"speed layer job ended with status {status}")
        time.sleep(0.5)
    log.info("stopping the speed layer")
    client.cancel().result()


def _stop_flag() -> dict[str, bool]:
    flag = {"requested": False}

    def request_stop(signum: int, frame: FrameType | None) -> None:
        flag["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return flag


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, help="state directory (default: settings)")
    parser.add_argument("--from-checkpoint", type=Path, help="restore from this chk-* directory")
    parser.add_argument("--resume", action="store_true", help="restore from the latest retained checkpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(**({"state_dir": args.state_dir} if args.state_dir else {}))
    restore_from = args.from_checkpoint or (latest_checkpoint(settings.flink_checkpoint_dir) if args.resume else None)
    from feature_store.redis_server import redis_url

    with redis_url(settings) as url:
        run(settings, url, restore_from)


if __name__ == "__main__":
    main()
