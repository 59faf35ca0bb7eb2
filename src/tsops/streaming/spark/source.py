"""Spark 4 Python streaming data sources for the Spark engine: raw event payloads from a Kafka
topic (polled with confluent-kafka) or from a CSV/JSONL file.

Both are `SimpleDataSourceStreamReader`s: Spark calls `read(start)` on the driver, keeps the
returned end offset in its checkpoint (offset log, written before the batch runs), and on
recovery re-reads a planned batch with `readBetweenOffsets(start, end)`. Nothing is committed
to Kafka: the checkpoint is the only record of progress. Rows are
`(payload, partition, offset, received)`, the same positions the python engine's sources give.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyspark.sql.datasource import DataSource, SimpleDataSourceStreamReader
from pyspark.sql.streaming.datasource import SupportsTriggerAvailableNow
from pyspark.sql.types import StructType

from tsops.records import INVALID_UTF8, payload_text
from tsops.streaming.sources import to_payload

RAW_SCHEMA = "payload string, partition int, offset long, received double"
BEGINNING = -2  # librdkafka's OFFSET_BEGINNING: a partition nothing was read from yet
Row = tuple[str, int, int, float]


def stopping(options: dict[str, str]) -> bool:
    """The engine asks for a graceful stop by creating `stop_file`: from then on a read returns
    no new records, so no batch is planned that the stop would interrupt."""
    path = options.get("stop_file")
    return path is not None and Path(path).exists()


class KafkaEventsSource(DataSource):
    """`spark.readStream.format("tsops_kafka")`; options: `topic`, `config` (librdkafka settings
    as JSON), `max_records` (per micro-batch), `poll_timeout_ms`, `stop_file`."""

    @classmethod
    def name(cls) -> str:
        return "tsops_kafka"

    def schema(self) -> str:
        return RAW_SCHEMA

    def simpleStreamReader(self, schema: StructType) -> SimpleDataSourceStreamReader:
        return KafkaEventsReader(dict(self.options))


class KafkaEventsReader(SimpleDataSourceStreamReader):
    """Offsets are `{partition: next offset}` (as strings → ints). A read polls from the start
    offsets until a poll comes back empty or `max_records` arrived: the broker's high watermarks
    are never consulted (they can be stale after a batched produce)."""

    PARTITION_REFRESH_S = 5.0
    MAX_READ_S = 1.0  # one read never takes longer, whatever the rate

    def __init__(self, options: dict[str, str]):
        self.topic = options["topic"]
        self.config: dict[str, Any] = json.loads(options["config"])
        self.max_records = int(options.get("max_records", "20000"))
        self.poll_timeout = float(options.get("poll_timeout_ms", "100")) / 1000
        self.options = options
        self.last_error: str | None = None
        self._consumer: Any = None
        self._position: dict[int, int] | None = None  # where the consumer's fetch stands
        self._partitions_at = 0.0

    def _client(self) -> Any:
        if self._consumer is None:
            from confluent_kafka import Consumer

            self._consumer = Consumer(self.config)
        return self._consumer

    def _partitions(self) -> list[int]:
        meta = self._client().list_topics(self.topic, timeout=10)
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None:
            return []
        self._partitions_at = time.monotonic()
        return sorted(topic.partitions)

    def _seek(self, offsets: dict[int, int]) -> None:
        from confluent_kafka import TopicPartition

        if self._position != offsets:
            self._client().assign([TopicPartition(self.topic, p, o) for p, o in sorted(offsets.items())])
            self._position = dict(offsets)

    def initialOffset(self) -> dict[str, int]:
        return {str(p): BEGINNING for p in self._partitions()}

    def read(self, start: dict[str, int]) -> tuple[Iterator[Row], dict[str, int]]:
        if stopping(self.options):
            return iter([]), start
        offsets = {int(p): int(o) for p, o in start.items()}
        if not offsets or time.monotonic() - self._partitions_at > self.PARTITION_REFRESH_S:
            for p in self._partitions():  # partitions added to the topic start at the beginning
                offsets.setdefault(p, BEGINNING)
        if not offsets:
            return iter([]), start
        self._seek(offsets)
        rows: list[Row] = []
        # Wait (up to the poll timeout) for the first record only, then drain what the client
        # already holds until a poll comes back empty: a steady stream cannot keep one read
        # going, and the batch ends where the data the client had ends.
        consumer = self._client()
        n, timeout = 1, self.poll_timeout
        deadline = time.monotonic() + self.MAX_READ_S
        while len(rows) < self.max_records and time.monotonic() < deadline:
            if not self._poll(consumer, rows, offsets, n, timeout) and timeout == 0:
                break
            n, timeout = min(self.max_records - len(rows), 10_000), 0
        self._position = dict(offsets)
        return iter(rows), {str(p): o for p, o in sorted(offsets.items())}

    def _poll(self, consumer: Any, rows: list[Row], offsets: dict[int, int], n: int, timeout: float) -> int:
        from tsops.kafka import decode

        decoded, error = decode(consumer.consume(num_messages=n, timeout=timeout))
        self.last_error = error or self.last_error
        now = time.time()
        for payload, partition, offset in decoded:
            rows.append((payload, partition, offset, now))
            offsets[partition] = offset + 1
        return len(decoded)

    def readBetweenOffsets(self, start: dict[str, int], end: dict[str, int]) -> Iterator[Row]:
        """Re-read a planned batch after a restart: exactly the records in [start, end). Runs
        in an executor's worker with a consumer of its own, closed afterwards."""
        from confluent_kafka import Consumer, TopicPartition

        target = {int(p): int(o) for p, o in end.items()}
        offsets = {p: int(start.get(str(p), BEGINNING)) for p in target}
        pending = {p for p, o in target.items() if o >= 0 and (offsets[p] < 0 or offsets[p] < o)}
        if not pending:
            return iter([])
        consumer = Consumer(self.config)
        consumer.assign([TopicPartition(self.topic, p, offsets[p]) for p in sorted(pending)])
        rows: list[Row] = []
        deadline = time.monotonic() + 120
        try:
            while pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.topic}: records up to {end} are no longer on the broker")
                batch: list[Row] = []
                self._poll(consumer, batch, {}, 10_000, self.poll_timeout)
                for row in batch:
                    p, o = row[1], row[2]
                    if p in pending and o < target[p]:
                        rows.append(row)
                        if o + 1 >= target[p]:
                            pending.discard(p)
        finally:
            consumer.close()
        return iter(rows)

    def commit(self, end: dict[str, int]) -> None:
        """Spark's checkpoint holds the offsets; nothing is committed to the broker."""


class FileEventsSource(DataSource):
    """`spark.readStream.format("tsops_file")`; options: `path` (CSV or JSONL), `max_records`,
    `follow` ("true": keep reading lines appended later), `stop_file`."""

    @classmethod
    def name(cls) -> str:
        return "tsops_file"

    def schema(self) -> str:
        return RAW_SCHEMA

    def simpleStreamReader(self, schema: StructType) -> SimpleDataSourceStreamReader:
        return FileEventsReader(dict(self.options))


class FileEventsReader(SimpleDataSourceStreamReader, SupportsTriggerAvailableNow):
    """Offsets are `{"line": data lines read, "pos": byte position}`; the line number is the
    record's offset, counted as the python engine's file source counts it (the CSV header is
    not a data line). With `Trigger.AvailableNow` it stops at the file's size when the query
    started, so a replay ends at the end of the file."""

    def __init__(self, options: dict[str, str]):
        self.path = Path(options["path"])
        self.max_records = int(options.get("max_records", "20000"))
        self.follow = options.get("follow", "false") == "true"
        self.csv = self.path.suffix.lower() == ".csv"
        self.options = options
        self._target: int | None = None

    def _header(self) -> tuple[list[str] | None, int]:
        if not self.csv:
            return None, 0
        with self.path.open("rb") as f:
            first = f.readline()
        return next(csv.reader([first.decode()])), len(first)

    def initialOffset(self) -> dict[str, int]:
        return {"line": 0, "pos": self._header()[1]}

    def prepareForTriggerAvailableNow(self) -> None:
        self._target = self.path.stat().st_size

    def _lines(
        self, start: dict[str, int], stop_at: int | None, limit: int | None
    ) -> tuple[list[Row], dict[str, int]]:
        header, _ = self._header()
        line, pos = int(start["line"]), int(start["pos"])
        rows: list[Row] = []
        now = time.time()
        with self.path.open("rb") as f:
            f.seek(pos)
            while limit is None or len(rows) < limit:
                if stop_at is not None and pos >= stop_at:
                    break
                raw = f.readline()
                if not raw or (not raw.endswith(b"\n") and self.follow):
                    break  # end of file, or a line still being written
                pos += len(raw)
                text = payload_text(raw)
                if text.startswith(INVALID_UTF8):  # the event parser dead-letters it
                    rows.append((text.rstrip("\n"), 0, line, now))
                elif text.strip():
                    rows.append((to_payload(text, header), 0, line, now))
                line += 1
        return rows, {"line": line, "pos": pos}

    def read(self, start: dict[str, int]) -> tuple[Iterator[Row], dict[str, int]]:
        if stopping(self.options):
            return iter([]), start
        rows, end = self._lines(start, self._target, self.max_records)
        return iter(rows), end

    def readBetweenOffsets(self, start: dict[str, int], end: dict[str, int]) -> Iterator[Row]:
        rows, _ = self._lines(start, int(end["pos"]), None)
        return iter(rows)
