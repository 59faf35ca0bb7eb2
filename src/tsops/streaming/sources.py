"""Event sources: one small interface, a registry by name (`file`, `kafka`)."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import pandas as pd

from tsops.errors import ConfigError, DataError, raise_if_disk_full
from tsops.records import INVALID_UTF8, payload_text
from tsops.settings import Project
from tsops.streaming import liveness
from tsops.streaming.events import RawRecord
from tsops.streaming.liveness import SourceHealth

log = logging.getLogger("tsops.streaming")

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
    """Replays a CSV/JSONL file; resumes after the last committed line (a checkpoint file).

    The checkpoint names the file by more than its path (inode, and a hash of its first bytes),
    so a file replaced or rewritten at the same path is replayed from its first line, with a
    warning, rather than resumed at a line of the old content."""

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
        self.started_over: str | None = None  # why a checkpoint was not resumed, if it was not
        self._handle = path.open("rb")
        self._csv_header = (
            next(csv.reader([self._handle.readline().decode("utf-8", errors="replace")]))
            if path.suffix.lower() == ".csv"
            else None
        )
        self._line = 0  # data lines read (the CSV header is not counted)
        self._identity = _FileIdentity.of(self._handle)
        saved = None if from_beginning else self._read_checkpoint()
        self.committed = 0
        if saved is not None:
            self.started_over = self._identity.differs(saved, self._handle)
            if self.started_over:
                log.warning(
                    "%s changed since its checkpoint (%s): replaying it from its first line",
                    path,
                    self.started_over,
                )
            elif "next_byte" in saved:
                self.committed = self._line = int(saved["next_line"])
                self._handle.seek(int(saved["next_byte"]))
            else:  # a checkpoint of an earlier tsops: lines only
                self.committed = int(saved["next_line"])
                while self._line < self.committed and self._handle.readline():
                    self._line += 1
        self._next_byte = {self._line: self._handle.tell()}  # line → byte offset, until committed
        self._first_event: pd.Timestamp | None = None
        self._first_wall = 0.0

    def _read_checkpoint(self) -> dict[str, Any] | None:
        try:
            saved = json.loads(self.checkpoint.read_bytes())
            if not isinstance(saved, dict) or int(saved["next_line"]) < 0:
                raise ValueError("not a checkpoint")
            return saved
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise DataError(
                f"the stream checkpoint of {self.path} is corrupt ({type(e).__name__}): delete it "
                "to replay the file from its first line (events already applied are then dead "
                "letters as duplicates, or dropped with stream.duplicates: drop), or pass "
                "--from-beginning",
                str(self.checkpoint),
            ) from None

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
            at = self._handle.tell()
            line = self._handle.readline()
            if self.follow and line and not line.endswith(b"\n"):  # a line still being written
                self._handle.seek(at)
                line = b""
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
                self._next_byte[self._line] = self._handle.tell()
                continue
            text = payload_text(line)
            payload = (
                text.rstrip("\n") if text.startswith(INVALID_UTF8) else to_payload(text, self._csv_header)
            )
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
            self._next_byte[self._line] = self._handle.tell()
            if paced and time.monotonic() >= deadline:
                break
        return out

    def commit(self, records: list[RawRecord]) -> None:
        """Durably record the line after the last of `records` (fsync, then an atomic rename)."""
        if not records:
            return
        self.committed = records[-1].offset + 1
        next_byte = self._next_byte[self.committed]
        self._next_byte = {k: v for k, v in self._next_byte.items() if k >= self.committed}
        saved = {"path": str(self.path), "next_line": self.committed, "next_byte": next_byte}
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint.with_suffix(".tmp")
        try:
            with tmp.open("wb") as f:
                f.write(json.dumps({**saved, **self._identity.as_dict(self._handle)}).encode())
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            tmp.unlink(missing_ok=True)  # the previous checkpoint stays: this batch is replayed
            raise_if_disk_full(e, self.checkpoint, "free space and run the stream again: nothing is lost")
            raise
        os.replace(tmp, self.checkpoint)

    def lag(self) -> int | None:
        return None

    def close(self) -> None:
        self._handle.close()


_PREFIX_BYTES = 4096  # hashed to tell a rewritten file from the one a checkpoint was taken of


@dataclass(frozen=True)
class _FileIdentity:
    """What tells one event file from another written at the same path."""

    device: int
    inode: int

    @classmethod
    def of(cls, handle: BinaryIO) -> _FileIdentity:
        st = os.fstat(handle.fileno())
        return cls(st.st_dev, st.st_ino)

    @staticmethod
    def _prefix_hash(handle: BinaryIO, size: int) -> str:
        return hashlib.sha256(os.pread(handle.fileno(), size, 0)).hexdigest()

    def as_dict(self, handle: BinaryIO) -> dict[str, Any]:
        size = min(os.fstat(handle.fileno()).st_size, _PREFIX_BYTES)
        return {
            "device": self.device,
            "inode": self.inode,
            "prefix_bytes": size,
            "prefix_sha256": self._prefix_hash(handle, size),
        }

    def differs(self, saved: dict[str, Any], handle: BinaryIO) -> str | None:
        """Why the open file is not the one of a checkpoint, or None if it is (or cannot be
        told: a checkpoint of an earlier tsops holds no identity)."""
        if "inode" not in saved:
            return None
        if (saved["device"], saved["inode"]) != (self.device, self.inode):
            return "another file at the same path (inode)"
        size = os.fstat(handle.fileno()).st_size
        if size < int(saved.get("next_byte", 0)):
            return f"shorter than the position reached ({size} < {saved['next_byte']} bytes)"
        prefix = int(saved["prefix_bytes"])
        if size < prefix or self._prefix_hash(handle, prefix) != saved["prefix_sha256"]:
            return f"its first {prefix} bytes were rewritten"
        return None


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
        self.health = SourceHealth(
            self.name, f"Kafka at {kafka.bootstrap_servers}", kafka.unreachable_after_s
        )
        self._rx: dict[str, int] = {}  # responses received per broker connection, at the last stats
        # The client's own log goes through ours, without a line per failed reconnection: the
        # outage is reported by `health`, once and then once a minute.
        watch = {"error_cb": self._on_error, "stats_cb": self._on_stats, "statistics.interval.ms": 1000}
        self.consumer = Consumer({**watch, "logger": _client_log, **consumer_config(kafka)})
        liveness.register(self.health)
        self.consumer.subscribe([self.topic], on_revoke=self._revoked, on_assign=self._assigned)
        self.assigned: set[int] = set()

    def _on_error(self, error: Any) -> None:
        from confluent_kafka import KafkaError

        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.health.unreachable(error.str())
        else:  # e.g. one connection refused: an outage only if nothing answers (`_on_stats`)
            self.health.error(error.str())

    def _on_stats(self, text: str) -> None:
        """librdkafka's statistics (every second, served by `poll`): a live broker answers
        fetches and heartbeats all the time, so a period without a response on a connection
        that is up is an outage too, also of a broker that hangs without refusing."""
        brokers = json.loads(text).get("brokers", {})
        rx = {name: int(b.get("rx", 0)) for name, b in brokers.items()}
        answered = any(
            n > self._rx.get(name, 0) and brokers[name].get("state") == "UP" for name, n in rx.items()
        )
        self._rx = rx
        if answered:
            self.health.contact()
        else:
            self.health.quiet()

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
        liveness.unregister(self.health)
        self.consumer.close()


class _WithoutReconnectionFailures(logging.Filter):
    """librdkafka logs each failed (re)connection, ~17 lines a second while a broker is gone;
    `SourceHealth` reports the outage instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        facility = record.args[0] if isinstance(record.args, tuple) and record.args else None
        return facility not in ("FAIL", "REQTMOUT")


_client_log = logging.getLogger("tsops.streaming.kafka_client")
_client_log.addFilter(_WithoutReconnectionFailures())

SOURCES: dict[str, Callable[..., Source]] = {"file": FileSource, "kafka": KafkaSource}
