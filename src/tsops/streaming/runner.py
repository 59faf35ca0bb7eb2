"""Wiring for `tsops stream` and `tsops replay`: settings → source, sinks, processor."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsops import heap, registry
from tsops.errors import ConfigError
from tsops.features.store import FeatureStoreClient
from tsops.monitoring.monitor import StreamMonitor
from tsops.settings import Project
from tsops.stopping import stop_on_signals
from tsops.streaming import sinks as sink_registry
from tsops.streaming.commit import CommitPipeline
from tsops.streaming.metrics import StreamMetrics
from tsops.streaming.processor import Processor, Summary
from tsops.streaming.reload import ChampionWatcher
from tsops.streaming.sinks import Sink
from tsops.streaming.sources import FileSource, KafkaSource, Source, read_lines
from tsops.streaming.state import KeyedState

SOURCES_HELP = "--source file:PATH (a CSV or JSONL of events) or --source kafka (stream.kafka.*)"


def parse_source(option: str | None, project: Project) -> tuple[str, Path | None]:
    """`file:PATH` or `kafka` (default: the settings' stream.source and stream.path)."""
    cfg = project.settings.stream
    if option is None and cfg.source == "file" and not cfg.path:
        raise ConfigError(
            f"no event source: pass {SOURCES_HELP}, "
            "or set stream.path (or stream.source: kafka) in tsops.yaml",
            "--source",
        )
    text = option or (f"file:{cfg.path}" if cfg.source == "file" else "kafka")
    if text == "kafka":
        return "kafka", None
    if text.startswith("file:") and len(text) > 5:
        path = Path(text[5:]).expanduser()
        if not path.is_absolute():  # stream.path is relative to the project, --source to the cwd
            path = (Path.cwd() if option else project.root) / path
        return "file", path
    raise ConfigError(f"unknown source {text!r}: use {SOURCES_HELP}", "--source")


@dataclass
class Worker:
    processor: Processor
    sinks: list[Sink]  # the prediction sinks and the dead-letter sink
    client: FeatureStoreClient

    def close(self) -> None:
        self.processor.source.close()
        for sink in self.sinks:
            sink.close()


def build_processor(
    project: Project,
    source_kind: str,
    path: Path | None,
    *,
    follow: bool = False,
    from_beginning: bool = False,
    metrics: StreamMetrics,
    monitor: StreamMonitor | None,
) -> Worker:
    """The one place that wires a python-engine worker: the champion, the source, the sinks,
    the keyed state, the monitor and the commit pipeline."""
    settings = project.settings
    cfg = settings.stream
    client = FeatureStoreClient(project)
    client.require_ingested()
    version, forecaster = registry.load_forecaster(project, registry.CHAMPION)
    sinks = [sink_registry.build(project, s) for s in cfg.sinks]
    dead = sink_registry.build(project, cfg.dead_letter)
    state = KeyedState(client)

    def revoked(partitions: list[int]) -> None:  # a rebalance: during a poll, once all is built
        processor.on_revoke(partitions)

    src: Source
    if source_kind == "file":
        assert path is not None
        src = FileSource(project, path, speedup=cfg.speedup, follow=follow, from_beginning=from_beginning)
    else:
        src = KafkaSource(project, on_revoke=revoked)
    pipeline = CommitPipeline(
        sinks=sinks,
        dead_letter_sink=dead,
        monitor=monitor,
        make_client=lambda: FeatureStoreClient(project),
        entity_col=settings.series.entity_col,
        time_col=settings.series.time,
        interval_ms=cfg.checkpoint_interval_ms,
        commit_offsets=src.commit,
        pipelined=cfg.checkpoint_interval_ms > 0,  # 0: everything durable before the next poll
        checkpoint_seconds=metrics.checkpoint,
    )
    processor = Processor(
        series=settings.series,
        stream=cfg,
        features=client.features,
        source=src,
        state=state,
        pipeline=pipeline,
        watcher=ChampionWatcher(project, version, cfg.reload_interval_s),
        forecaster=forecaster,
        model_name=settings.model.name,
        model_version=version,
        metrics=metrics,
    )
    return Worker(processor, [*sinks, dead], client)


def run_stream(
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
    monitoring: bool = True,
    metrics: StreamMetrics | None = None,
    monitor: StreamMonitor | None = None,
) -> Summary:
    """Run the python engine until the source ends, `max_events`, SIGTERM/SIGINT or `stop`."""
    kind, path = parse_source(source, project)
    metrics = metrics or StreamMetrics()
    if metrics_port:
        metrics.serve(metrics_port, metrics_host)
    own_monitor = monitor is None and monitoring  # a caller's monitor stays open for the caller
    if own_monitor:
        monitor = StreamMonitor(project, registry=metrics.registry)
    try:
        worker = build_processor(
            project,
            kind,
            path,
            follow=follow,
            from_beginning=from_beginning,
            metrics=metrics,
            monitor=monitor,
        )
    except BaseException:
        if own_monitor and monitor is not None:
            monitor.close()
        raise
    # Start-up objects live as long as the worker: out of the collector's scans (without it a
    # full collection every ~10 s stalled the poll loop for 0.2–0.3 s; see tsops.heap).
    heap.settle()

    try:
        with stop_on_signals(stop) as stopping:
            summary = worker.processor.run(stopping, max_events, until_idle)
    finally:
        worker.close()
        if own_monitor and monitor is not None:
            monitor.close()
    if kind == "file" and not follow:
        worker.client.compact_offline()
    return summary


def replay_to_kafka(
    project: Project,
    path: Path,
    *,
    rate: float = 0.0,
    topic: str | None = None,
    partitions: int = 4,
) -> dict[str, Any]:
    """Publish a CSV/JSONL file's events to the events topic, keyed by entity."""
    from confluent_kafka import Producer

    from tsops.kafka import ensure_topic, producer_config

    if not path.exists():
        raise ConfigError("event file not found", str(path))
    kafka = project.settings.stream.kafka
    topic = topic or kafka.events_topic
    ensure_topic(kafka, topic, partitions)
    producer = Producer(producer_config(kafka))
    entity = project.settings.series.entity
    sent = 0
    started = time.monotonic()
    for payload in read_lines(path):
        key = ""
        try:
            key = str(json.loads(payload).get(entity, "")) if entity else ""
        except (json.JSONDecodeError, AttributeError):
            pass  # poison events are published as they are; the processor dead-letters them
        producer.produce(topic, payload.encode(), key.encode())
        producer.poll(0)
        sent += 1
        if rate > 0:
            delay = started + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    while producer.flush(1.0) > 0:
        pass
    return {"published": sent, "topic": topic, "seconds": round(time.monotonic() - started, 3)}
