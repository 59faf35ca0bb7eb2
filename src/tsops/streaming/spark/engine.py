"""`tsops stream --engine spark`: the stream pipeline as a Spark Structured Streaming query.

    raw payloads (Kafka or a file; `source.py`)
      → validate and key by entity (`Keyer`, `events.parse`)
      → per-entity state (`transformWithStateInPandas`, RocksDB state store; `EntityProcessor`
        runs `steps.push_event` (bars, gap filling) and `steps.NewRows`)
      → forecasts (`mapInPandas`, `Predictor`: the champion, once per Python worker)
      → `foreachBatch` on the driver (`BatchWriter`): the batch as a `MicroBatch` to the commit
        pipeline (`tsops.streaming.commit`, the python engine's own: prediction sinks → dead
        letters → monitor → offline append → online rows → states), then Spark commits it.

Progress (source offsets and Spark's state) lives in the checkpoint; a crash replays the
uncommitted batch from the same offsets, and every write is idempotent (the same records
with the same keys), so a replay changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tsops.errors import ConfigError, ModelError
from tsops.features.definitions import EntityState, FeatureSet
from tsops.features.store import FeatureStoreClient
from tsops.monitoring.monitor import StreamMonitor
from tsops.records import Event, Prediction
from tsops.settings import Project, SparkStreamSettings
from tsops.stopping import stop_on_signals
from tsops.streaming import sinks as sink_registry
from tsops.streaming.commit import CommitPipeline, MicroBatch
from tsops.streaming.metrics import StreamMetrics
from tsops.streaming.processor import Summary
from tsops.streaming.reload import ChampionWatcher
from tsops.streaming.runner import parse_source

log = logging.getLogger("tsops.streaming")

ROCKSDB = "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
STOP_FILE = "stopping"


def spark_session(settings: SparkStreamSettings) -> Any:
    """The SparkSession (an existing one is reused; its runtime settings are applied), with
    the engine's Python data sources registered."""
    from tsops.spark_session import get_session
    from tsops.streaming.spark.source import FileEventsSource, KafkaEventsSource

    conf: dict[str, Any] = {
        "spark.sql.shuffle.partitions": settings.shuffle_partitions,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.streaming.stateStore.providerClass": ROCKSDB,
        # A commit writes a small changelog instead of uploading a state snapshot every batch.
        "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",  # toPandas of each micro-batch
        **settings.conf,
    }
    spark = get_session(settings.master, "tsops-stream", conf)
    spark.dataSource.register(KafkaEventsSource)
    spark.dataSource.register(FileEventsSource)
    return spark


def source_name(project: Project, kind: str, path: Path | None) -> str:
    """The offset space of the source, named as the python engine names it (so open bars'
    offsets and checkpoints line up between engines)."""
    if kind == "file":
        assert path is not None
        return f"file-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}"
    return f"kafka-{project.settings.stream.kafka.events_topic}"


class BatchWriter:
    """`foreachBatch` on the driver: each batch through the commit pipeline, written before it
    returns (Spark commits the batch's offsets in its checkpoint afterwards)."""

    def __init__(self, project: Project, pipeline: CommitPipeline, metrics: StreamMetrics):
        self.series = project.settings.series
        self.lookback = FeatureSet(project.settings.features).lookback
        self.pipeline = pipeline
        self.metrics = metrics
        self.summary = Summary()
        self.entities: set[str] = set()
        self.last_data = time.monotonic()
        names = FeatureSet(project.settings.features).names
        self.columns = [self.series.entity_col, self.series.time, self.series.target, *names]

    def __call__(self, batch: Any, batch_id: int) -> None:
        frame = batch.toPandas()
        kind = frame["kind"]
        predictions = sorted(
            (json.loads(t) for t in frame.loc[kind == "prediction", "text"]), key=lambda r: r["key"]
        )
        dead = sorted(
            (json.loads(t) for t in frame.loc[kind == "dead", "text"]),
            key=lambda d: (d["partition"], d["offset"]),
        )
        states = {
            e: EntityState.from_dict(self.lookback, json.loads(t))
            for e, t in frame.loc[kind == "state", ["entity", "text"]].itertuples(index=False)
        }
        observed = [
            Event(e, pd.Timestamp(int(ns)), float(v[0]))
            for e, ns, v in frame.loc[kind == "observed", ["entity", "time_ns", "values"]].itertuples(
                index=False
            )
        ]
        rows = self._feature_rows(frame[kind == "row"])
        self.pipeline.commit(MicroBatch(predictions, dead, observed, rows, states))
        self._count(frame, predictions, dead, states)

    def _feature_rows(self, rows: pd.DataFrame) -> pd.DataFrame:
        if rows.empty:
            return pd.DataFrame(columns=self.columns)
        values = np.vstack(rows["values"].to_numpy())
        table = pd.DataFrame(values, columns=self.columns[2:])
        table.insert(0, self.series.time, pd.to_datetime(rows["time_ns"].to_numpy(dtype=np.int64)))
        table.insert(0, self.series.entity_col, rows["entity"].to_numpy())
        return table

    def _count(
        self,
        frame: pd.DataFrame,
        predictions: list[Prediction],
        dead: list[dict[str, Any]],
        states: dict[str, EntityState],
    ) -> None:
        counts: Counter[str] = Counter()
        for text in frame.loc[frame["kind"] == "counts", "text"]:
            counts.update(json.loads(text))
        s, m = self.summary, self.metrics
        if counts["consumed"]:
            s.batches += 1
            self.last_data = time.monotonic()
        s.consumed += counts["consumed"]
        s.processed += counts["applied"]
        s.dropped += counts["dropped"]
        s.warming_up += counts["warming_up"]
        s.gap_steps_filled += counts["gap_steps_filled"]
        s.bars_closed += counts["bars_closed"]
        s.predictions += len(predictions)
        for d in dead:
            s.dead_letters[d["error"]] += 1
            m.dead_letters.labels(d["error"]).inc()
        m.events_in.inc(counts["consumed"])
        m.events_processed.inc(counts["applied"])
        m.predictions.inc(len(predictions))
        for p in predictions:
            m.latency.observe(p["latency_ms"] / 1000)
        self.entities.update(states)
        m.state_size.set(len(self.entities))


def raw_events(
    spark: Any, project: Project, kind: str, path: Path | None, follow: bool, stop_file: Path
) -> Any:
    """The source as a streaming DataFrame of `payload, partition, offset, received`."""
    cfg = project.settings.stream
    limit = str(cfg.spark.max_events_per_batch)
    if kind == "file":
        return (
            spark.readStream.format("tsops_file")
            .option("path", str(path))
            .option("max_records", limit)
            .option("follow", "true" if follow else "false")
            .option("stop_file", str(stop_file))
            .load()
        )
    from tsops.kafka import consumer_config, ensure_topic

    kafka = cfg.kafka
    ensure_topic(kafka, kafka.events_topic)
    if cfg.spark.kafka_reader == "connector":
        return _connector_events(spark, project, limit)
    config = {**consumer_config(kafka), "group.id": f"{kafka.group_id}-spark", "enable.partition.eof": False}
    return (
        spark.readStream.format("tsops_kafka")
        .option("topic", kafka.events_topic)
        .option("config", json.dumps(config))
        .option("max_records", limit)
        .option("poll_timeout_ms", str(cfg.poll_timeout_ms))
        .option("stop_file", str(stop_file))
        .load()
    )


def _connector_events(spark: Any, project: Project, limit: str) -> Any:
    """Spark's own Kafka source (the spark-sql-kafka jar must be on the classpath)."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    kafka = project.settings.stream.kafka
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", kafka.bootstrap_servers)
        .option("subscribe", kafka.events_topic)
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", limit)
        .option("failOnDataLoss", "true")
    )
    for key, value in kafka.extra.items():
        reader = reader.option(f"kafka.{key}", str(value))
    try:
        frame = reader.load()
    except AnalysisException as e:
        raise ConfigError(
            "Spark's Kafka connector is not on the classpath (add org.apache.spark:spark-sql-kafka-0-10 "
            "to stream.spark.conf spark.jars.packages, or use kafka_reader: python)",
            "stream.spark.kafka_reader",
            [str(e).splitlines()[0]],
        ) from None
    return frame.select(
        F.col("value").cast("string").alias("payload"),
        F.col("partition").cast("int").alias("partition"),
        F.col("offset"),
        (F.unix_micros(F.current_timestamp()) / 1e6).alias("received"),
    )


def start_query(
    spark: Any,
    project: Project,
    kind: str,
    path: Path | None,
    *,
    follow: bool,
    checkpoint: Path,
    version: int,
    writer: BatchWriter,
) -> Any:
    from tsops.streaming.spark.stateful import KEYED_SCHEMA, OUTPUT_SCHEMA, EntityProcessor, Keyer, Predictor

    cfg = project.settings.stream.spark
    # A session passed in may have been built for other settings (a checkpoint keeps its own).
    spark.conf.set("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
    stop_file = checkpoint / STOP_FILE
    stop_file.unlink(missing_ok=True)
    name = source_name(project, kind, path)
    outputs = (
        raw_events(spark, project, kind, path, follow, stop_file)
        .mapInPandas(Keyer(project), KEYED_SCHEMA)
        .groupBy("key")
        .transformWithStateInPandas(EntityProcessor(project, name), OUTPUT_SCHEMA, "Append", "None")
        .mapInPandas(Predictor(project, version), OUTPUT_SCHEMA)
    )
    stream = outputs.writeStream.foreachBatch(writer).option("checkpointLocation", str(checkpoint))
    if kind == "file" and not follow:
        stream = stream.trigger(availableNow=True)  # a replay ends at the end of the file
    elif cfg.trigger_interval_ms > 0:
        stream = stream.trigger(processingTime=f"{cfg.trigger_interval_ms} milliseconds")
    return stream.start()


def stop_gracefully(query: Any, stop_file: Path, timeout: float = 120.0) -> None:
    """Let the running micro-batch finish (no new one is planned once `stop_file` exists),
    then stop the query. A batch interrupted anyway is replayed from the checkpoint."""
    stop_file.touch()
    deadline = time.monotonic() + timeout
    while query.isActive and time.monotonic() < deadline:
        if not query.status["isTriggerActive"]:
            break
        time.sleep(0.02)
    query.stop()


class KafkaLag:
    """Records of the events topic the query has not read yet: the broker's high watermarks
    minus the end offsets of the query's last batch (from Spark's progress), the python
    engine's `tsops_stream_consumer_lag`."""

    def __init__(self, project: Project):
        self.kafka = project.settings.stream.kafka
        self._consumer: Any = None

    def __call__(self, progress: Any) -> int | None:
        from confluent_kafka import Consumer, TopicPartition

        from tsops.kafka import consumer_config

        sources = _as_dict(progress).get("sources") or []
        end = sources[0].get("endOffset") if sources else None
        if isinstance(end, str):
            end = json.loads(end)
        if not end:
            return None
        if self._consumer is None:
            config = {**consumer_config(self.kafka), "group.id": f"{self.kafka.group_id}-spark-lag"}
            self._consumer = Consumer(config)
        total = 0
        for partition, offset in end.items():
            part = TopicPartition(self.kafka.events_topic, int(partition))
            low, high = self._consumer.get_watermark_offsets(part, timeout=2, cached=False)
            total += max(0, high - max(int(offset), low))
        return total

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()


def _as_dict(progress: Any) -> dict[str, Any]:
    if progress is None:
        return {}
    if isinstance(progress, dict):
        return progress
    return json.loads(progress.json)  # type: ignore[no-any-return]


LAG_EVERY_S = 2.0


def run_spark_stream(
    project: Project,
    *,
    source: str | None = None,
    follow: bool = False,
    from_beginning: bool = False,
    max_events: int | None = None,
    until_idle: float | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    stop: threading.Event | None = None,
    spark: Any = None,
    monitoring: bool = True,
) -> Summary:
    """Run the Spark engine until a file replay ends, `max_events`, `until_idle`, SIGTERM/SIGINT
    or `stop`; the same options and summary as the python engine's `run_stream`. A session
    passed in `spark` is left running; one created here is stopped at the end."""
    from tsops import registry

    kind, path = parse_source(source, project)
    if kind == "file" and (path is None or not path.exists()):
        raise ConfigError("event file not found", str(path))
    if kind == "file" and project.settings.stream.speedup > 0:
        raise ConfigError("the Spark engine does not pace a replay: set it to 0", "stream.speedup")
    name = project.settings.model.name
    version = registry.version_for_alias(registry.connect(project), name, registry.CHAMPION)
    if version is None:
        raise ModelError(f"no version has the alias {registry.CHAMPION!r}; run tsops train / promote", name)
    cfg = project.settings.stream
    client = FeatureStoreClient(project)
    client.require_ingested()
    sinks = [sink_registry.build(project, s) for s in cfg.sinks]
    dead = sink_registry.build(project, cfg.dead_letter)
    metrics = StreamMetrics()
    if metrics_port:
        metrics.serve(metrics_port, metrics_host)
    monitor = StreamMonitor(project, registry=metrics.registry) if monitoring else None
    pipeline = CommitPipeline(
        sinks=sinks,
        dead_letter_sink=dead,
        monitor=monitor,
        make_client=lambda: client,
        entity_col=project.settings.series.entity_col,
        time_col=project.settings.series.time,
        interval_ms=0,  # each batch is written before foreachBatch returns; Spark commits it
    )
    writer = BatchWriter(project, pipeline, metrics)
    lag = KafkaLag(project) if kind == "kafka" else None
    base = Path(cfg.spark.checkpoint_dir).expanduser()
    checkpoint = (base if base.is_absolute() else project.root / base) / source_name(project, kind, path)
    if from_beginning:
        shutil.rmtree(checkpoint, ignore_errors=True)
    checkpoint.mkdir(parents=True, exist_ok=True)

    own_session = spark is None
    session = spark_session(cfg.spark) if own_session else spark
    try:
        # After the session: PySpark's SparkContext installs a SIGINT handler of its own that
        # cancels every job (the running batch) and raises KeyboardInterrupt.
        with stop_on_signals(stop) as stopping:
            _drive(
                session,
                project,
                kind,
                path,
                follow,
                checkpoint,
                version,
                writer,
                lag,
                stopping,
                max_events,
                until_idle,
            )
    finally:
        pipeline.close()
        for s in [*sinks, dead]:
            s.close()
        if monitor is not None:
            monitor.close()
        if lag is not None:
            lag.close()
        if own_session:
            session.stop()
    if kind == "file" and not follow:
        client.compact_offline()
    return writer.summary


def _drive(
    session: Any,
    project: Project,
    kind: str,
    path: Path | None,
    follow: bool,
    checkpoint: Path,
    version: int,
    writer: BatchWriter,
    lag: KafkaLag | None,
    stop: threading.Event,
    max_events: int | None,
    until_idle: float | None,
) -> None:
    """Run the query until it ends or a stop condition holds; restart it on a promotion."""
    cfg = project.settings.stream

    def start(version: int) -> Any:
        return start_query(
            session, project, kind, path, follow=follow, checkpoint=checkpoint, version=version, writer=writer
        )

    query = start(version)
    started = writer.last_data = time.monotonic()
    # Executors load the champion themselves: the driver only needs the new version's number.
    champion = ChampionWatcher(
        project, version, cfg.reload_interval_s, load=lambda v: None, who="spark stream"
    )
    champion.start()
    try:
        query = _run(query, start, champion, writer, lag, stop, max_events, until_idle, checkpoint)
    finally:
        champion.stop()
    writer.summary.seconds = time.monotonic() - started
    error = query.exception()
    if error is not None and not stop.is_set():
        raise RuntimeError(f"the Spark query failed: {error}")
    if error is not None:  # e.g. Ctrl-C in a terminal also reached Spark's Python workers
        print(
            f"the batch running at the stop failed and is replayed on the next start: {error}",
            file=sys.stderr,
        )


def _run(
    query: Any,
    start: Callable[[int], Any],
    champion: ChampionWatcher,
    writer: BatchWriter,
    lag: KafkaLag | None,
    stop: threading.Event,
    max_events: int | None,
    until_idle: float | None,
    checkpoint: Path,
) -> Any:
    """The driver's loop; returns the query that ran last."""
    next_lag = time.monotonic() + LAG_EVERY_S
    monitor = writer.pipeline.monitor
    while query.isActive:
        moved = champion.take()
        if moved is not None:  # a promotion: restart the query on the same checkpoint
            version = moved[0]
            stop_gracefully(query, checkpoint / STOP_FILE)
            query = start(version)
            writer.summary.reloads += 1
            log.info("spark stream: champion moved to v%s; the query restarted with it", version)
        status = query.status
        if status["isDataAvailable"] and status["isTriggerActive"]:
            writer.last_data = time.monotonic()  # a batch with data is running, not idle
        elif monitor is not None:
            monitor.refresh()
        if lag is not None and time.monotonic() >= next_lag:
            next_lag = time.monotonic() + LAG_EVERY_S
            try:
                behind = lag(query.lastProgress)
            except Exception as e:  # a figure, never a reason to stop the stream
                log.warning("spark stream: consumer lag not measured: %s", e)
                behind = None
            if behind is not None:
                writer.metrics.lag.set(behind)
        idle = until_idle is not None and time.monotonic() - writer.last_data > until_idle
        enough = max_events is not None and writer.summary.consumed >= max_events
        if stop.is_set() or idle or enough:
            stop_gracefully(query, checkpoint / STOP_FILE)
            break
        try:
            query.awaitTermination(0.1)
        except Exception:  # the query failed: reported by the caller
            break
    return query
