"""Incremental readers of files another process appends to: a JSONL file (the stream's
prediction and dead-letter sinks) and a folder of Parquet part files (the offline store's
stream parts, a Parquet sink). Each call returns only what was added since the last one, so
a dashboard polling every second reads a few kilobytes, not the whole file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

INITIAL_BYTES = 16 << 20  # a first read starts at most this far before the end of the file
MAX_READ_BYTES = 16 << 20  # one call reads at most this much; the rest comes next call


def json_objects(lines: list[bytes]) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects among `lines` (blank lines skipped) and how many lines were not one."""
    records, bad = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        if isinstance(value, dict):
            records.append(value)
        else:
            bad += 1
    return records, bad


@dataclass
class Lines:
    records: list[dict[str, Any]]
    reset: bool = False  # the file was replaced or truncated: what was read before is stale
    bad: int = 0  # lines that were not JSON objects


class JsonlTail:
    """New complete JSON lines of a file since the last `read`. A partial last line (a writer
    mid-append) is kept until its newline arrives. A replaced or truncated file starts over."""

    def __init__(self, path: Path, initial_bytes: int = INITIAL_BYTES):
        self.path = path
        self.initial_bytes = initial_bytes
        self.offset: int | None = None  # None: not opened yet
        self.inode: int | None = None
        self._partial = b""
        self._skip_first = False

    def read(self) -> Lines:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            reset = bool(self.offset)
            self.offset, self.inode, self._partial = 0, None, b""  # appears later: read from its start
            return Lines([], reset=reset)
        reset = False
        if self.offset is None or self.inode != st.st_ino or st.st_size < self.offset:
            reset = self.offset is not None and self.inode is not None
            start = 0 if self.offset == 0 and self.inode is None else max(0, st.st_size - self.initial_bytes)
            self.offset, self.inode, self._partial = start, st.st_ino, b""
            self._skip_first = start > 0  # started mid-file: the first line is probably cut
        if st.st_size == self.offset:
            return Lines([], reset=reset)
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(min(st.st_size - self.offset, MAX_READ_BYTES))
        self.offset += len(data)
        chunks = (self._partial + data).split(b"\n")
        self._partial = chunks.pop()
        if self._skip_first and chunks:
            chunks.pop(0)
            self._skip_first = False
        records, bad = json_objects(chunks)
        return Lines(records, reset=reset, bad=bad)


class PartsTail:
    """Part files (`part-*.parquet`) added to a folder since the last `read`, oldest name first.
    A part that vanished before it was read (merged by a compaction) is skipped."""

    def __init__(self, folder: Path, columns: list[str] | None = None):
        self.folder = folder
        self.columns = columns
        self.seen: set[str] = set()

    def read(self) -> list[pa.Table]:
        try:
            names = sorted(
                e.name
                for e in os.scandir(self.folder)
                if e.name.startswith("part-") and e.name.endswith(".parquet")
            )
        except FileNotFoundError:
            return []
        tables = []
        current = set(names)
        for name in names:
            if name in self.seen:
                continue
            try:
                tables.append(pq.read_table(self.folder / name, columns=self.columns))
            except FileNotFoundError:
                pass
            except (OSError, pa.ArrowInvalid):
                continue  # not complete yet (writers rename into place; a foreign file): retry next time
            self.seen.add(name)
        self.seen &= current  # forget merged parts so the set stays small
        return tables


class FileVersion:
    """Whether a file changed (replaced, rewritten) since the last `changed` call."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple[int, int, int] | None = None

    def changed(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            stamp = None
        else:
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return stamp is not None


class TopicTail:
    """New JSON records of a Kafka topic since the last `read` (the stream's prediction and
    dead-letter sinks in cluster mode). A consumer of its own (a group per dashboard, never
    committing) reads every partition from the beginning; one call reads what arrived, at most
    `max_records`."""

    def __init__(self, consumer_config: dict[str, Any], topic: str, max_records: int = 50_000):
        self.config = consumer_config
        self.topic = topic
        self.max_records = max_records
        self._consumer: Any = None

    def read(self) -> Lines:
        if self._consumer is None:
            from confluent_kafka import Consumer

            self._consumer = Consumer(self.config)
            self._consumer.subscribe([self.topic])
        records: list[dict[str, Any]] = []
        bad = 0
        while len(records) < self.max_records:
            messages = self._consumer.consume(num_messages=5000, timeout=0.2)
            if not messages:
                break
            values = [m.value() for m in messages if m.error() is None and m.value() is not None]
            found, wrong = json_objects(values)
            records += found
            bad += wrong
        return Lines(records, bad=bad)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
