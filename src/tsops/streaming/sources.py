"""Event sources: one small interface, a registry by name (`file`, `kafka`)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pandas as pd

from tsops.errors import ConfigError
from tsops.settings import Project
from tsops.streaming.events import RawRecord

AssignmentListener = Callable[[list[int]], None]


class Source(Protocol):
    """Delivers raw records; `commit` marks everything returned so far as durably processed."""

    exhausted: bool  # a finite source has nothing more to give
    name: str  # identifies the offset space: offsets of one name and partition only grow

    def poll(self, max_records: int, timeout: float) -> list[RawRecord]: ...

    def commit(self, records: list[RawRecord]) -> None: ...

    def lag(self) -> int | None: ...

    def close(self) -> None: ...


def read_lines(path: Path) -> Iterator[str]:
    """Events of a CSV or JSONL file as JSON strings (CSV rows become objects; numbers parsed)."""
    with path.open(newline="") as f:
        header = next(csv.reader([f.readline()])) if path.suffix.lower() == ".csv" else None
        for line in f:
            if line.strip():
                yield to_payload(line, header)


def to_payload(line: str, csv_header: list[str] | None) -> str:
    """One file line as a JSON payload: JSONL lines as they are, CSV rows as objects."""
    if csv_header is None:
        return line.rstrip("\n")
    values = next(csv.reader([line]))
    return json.dumps({k: _number(v) for k, v in zip(csv_header, values, strict=False)})


def _number(text: str | None) -> object:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


class FileSource:
    """Replays a CSV/JSONL file; resumes after the last committed line (a checkpoint file)."""

    def __init__(
        self,
        project: Project,
        path: Path,
        *,
        speedup: float = 0.0,
        follow: bool = False,
        from_beginning: bool = False,
    ):
        if not path.exists():
            raise ConfigError("event file not found", str(path))
        self.path = path
        self.speedup = speedup
        self.follow = follow
        self.exhausted = False
        self.time_col = project.settings.series.time
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        self.name = f"file-{digest}"
        self.checkpoint = project.state_dir / "checkpoints" / f"{self.name}.json"
        self.committed = 0
        if self.checkpoint.exists() and not from_beginning:
            self.committed = int(json.loads(self.checkpoint.read_text())["next_line"])
        self._handle = path.open(newline="")
        self._csv_header = (
            next(csv.reader([self._handle.readline()])) if path.suffix.lower() == ".csv" else None
        )
        self._line = 0  # data lines read (the CSV header is not counted)
        while self._line < self.committed and self._handle.readline():
            self._line += 1
        self._first_event: pd.Timestamp | None = None
        self._first_wall = 0.0

    def _delay(self, payload: str) -> float:
        """Seconds until the event is due in an accelerated replay (≤ 0: now)."""
        try:
            t = pd.Timestamp(json.loads(payload)[self.time_col])
        except Exception:  # a bad event is the processor's to reject, not the pacer's
            return 0.0
        if self._first_event is None:
            self._first_event, self._first_wall = t, time.monotonic()
            return 0.0
        due = self._first_wall + (t - self._first_event).total_seconds() / self.speedup
        return due - time.monotonic()

    def poll(self, max_records: int, timeout: float) -> list[RawRecord]:
        out: list[RawRecord] = []
        deadline = time.monotonic() + timeout
        paced = self.speedup > 0
        while len(out) < max_records:
            at = self._handle.tell() if self.follow or paced else 0
            line = self._handle.readline()
            if self.follow and line and not line.endswith("\n"):  # a line still being written
                self._handle.seek(at)
                line = ""
            if not line:
                if not self.follow:
                    self.exhausted = not out
                    break
                # Following: return what arrived as soon as there is any (like a Kafka poll).
                if out or time.monotonic() >= deadline:
                    break
                time.sleep(0.002)
                continue
            if not line.strip():
                self._line += 1
                continue
            payload = to_payload(line, self._csv_header)
            if paced:
                delay = self._delay(payload)
                if delay > 0 and out:  # return what is due; this event waits for the next poll
                    self._handle.seek(at)
                    break
                if delay > 0:
                    time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
                    if self._delay(payload) > 0:  # not due within this poll's timeout
                        self._handle.seek(at)
                        break
            out.append(RawRecord(payload, 0, self._line, time.perf_counter()))
            self._line += 1
            if paced and time.monotonic() >= deadline:
                break
        return out

    def commit(self, records: list[RawRecord]) -> None:
        if not records:
            return
        self.committed = records[-1].offset + 1
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint.with_suffix(".tmp")
        tmp.write_text(json.dumps({"path": str(self.path), "next_line": self.committed}))
        os.replace(tmp, self.checkpoint)

    def lag(self) -> int | None:
        return None

    def close(self) -> None:
        self._handle.close()


class KafkaSource:
    """A consumer-group member. Offsets are committed only through `commit`, after the
    processor has written the batch; partitions revoked in a rebalance are reported so the
    processor can drop the entities it no longer owns."""

    def __init__(self, project: Project, on_revoke: AssignmentListener | None = None):
        from confluent_kafka import Consumer

        from tsops.kafka import consumer_config, ensure_topic

        kafka = project.settings.stream.kafka
        ensure_topic(kafka, kafka.events_topic)
        self.topic = kafka.events_topic
        self.name = f"kafka-{self.topic}"
        self.exhausted = False
        self._on_revoke = on_revoke
        self._high: dict[int, int] = {}
        self._committed: dict[int, int] = {}
        self.last_error: str | None = None  # the latest client error, for diagnostics
        self.consumer = Consumer(consumer_config(kafka))
        self.consumer.subscribe([self.topic], on_revoke=self._revoked, on_assign=self._assigned)
        self.assigned: set[int] = set()

    def _assigned(self, consumer: object, partitions: list) -> None:  # type: ignore[type-arg]
        self.assigned |= {p.partition for p in partitions}

    def _revoked(self, consumer: object, partitions: list) -> None:  # type: ignore[type-arg]
        lost = [p.partition for p in partitions]
        self.assigned -= set(lost)
        for p in lost:  # a later assignment starts from the group's offset, not from ours
            self._high.pop(p, None)
            self._committed.pop(p, None)
        if self._on_revoke:
            self._on_revoke(lost)

    def poll(self, max_records: int, timeout: float) -> list[RawRecord]:
        from tsops.kafka import decode

        # Wait for the first record only, then take what the client already holds: a poll
        # returns as soon as there is work (consume(n, timeout) would wait to fill n records).
        first = self.consumer.poll(timeout)
        if first is None:
            return []
        more = self.consumer.consume(num_messages=max_records - 1, timeout=0) if max_records > 1 else []
        messages = [first, *more]
        now = time.perf_counter()
        decoded, error = decode(messages)
        self.last_error = error or self.last_error
        out = []
        for payload, partition, offset in decoded:
            out.append(RawRecord(payload, partition, offset, now))
            self._high[partition] = max(self._high.get(partition, -1), offset)
            # The first record of an assignment is where the group's committed offset stood.
            self._committed.setdefault(partition, offset)
        return out

    def commit(self, records: list[RawRecord]) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        if not records:
            return
        last: dict[int, int] = {}
        for r in records:
            last[r.partition] = max(last.get(r.partition, -1), r.offset)
        offsets = [TopicPartition(self.topic, p, o + 1) for p, o in last.items()]
        for attempt in range(60):  # rides out a broker pause; never skips a commit silently
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
                break
            except KafkaException as e:
                if attempt == 59:
                    raise
                self.last_error = str(e)
                time.sleep(0.5)
        self._committed.update({p: o + 1 for p, o in last.items()})

    def lag(self) -> int | None:
        """Records seen but not yet committed (from our own offsets, not broker watermarks)."""
        return sum(
            max(0, h + 1 - self._committed.get(p, 0)) for p, h in self._high.items() if p in self.assigned
        )

    def close(self) -> None:
        self.consumer.close()


SOURCES: dict[str, Callable[..., Source]] = {"file": FileSource, "kafka": KafkaSource}
