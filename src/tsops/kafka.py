"""confluent-kafka client settings and record decoding, shared by the stream sources (python and Spark
engines), the stream sinks, `tsops replay`, the batch Kafka target and the dashboard's topic
tails: one module a layer below all of them."""

from __future__ import annotations

from typing import Any

from tsops.records import payload_text
from tsops.settings import KafkaSettings


def consumer_config(kafka: KafkaSettings) -> dict[str, Any]:
    return {
        "bootstrap.servers": kafka.bootstrap_servers,
        "group.id": kafka.group_id,
        "enable.auto.commit": False,  # offsets are committed after the sinks accepted a batch
        "auto.offset.reset": "earliest",
        "session.timeout.ms": kafka.session_timeout_ms,
        "heartbeat.interval.ms": kafka.heartbeat_interval_ms,
        "group.protocol": "classic",
        "topic.metadata.refresh.interval.ms": 5000,  # notice new topics/partitions quickly
        "fetch.wait.max.ms": kafka.fetch_wait_max_ms,
        **kafka.extra,
    }


def producer_config(kafka: KafkaSettings) -> dict[str, Any]:
    return {
        "bootstrap.servers": kafka.bootstrap_servers,
        "acks": "all",
        "enable.idempotence": False,
        "linger.ms": 2,
        **kafka.extra,
    }


def ensure_topic(kafka: KafkaSettings, topic: str, partitions: int = 4) -> None:
    """Create the topic if the broker does not have it (brokers may not auto-create)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers, **kafka.extra})
    if topic in admin.list_topics(timeout=10).topics:
        return
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        try:
            future.result(10)
        except Exception as e:  # created concurrently by another worker is fine
            if "exist" not in str(e).lower():
                raise


def decode(messages: list[Any]) -> tuple[list[tuple[str, int, int]], str | None]:
    """(payload, partition, offset) of each record among polled messages, payloads as text
    (bytes that are not UTF-8 marked: the event parser dead-letters them); partition-EOF events are
    skipped; also the text of the last other error, if any."""
    from confluent_kafka import KafkaError

    out: list[tuple[str, int, int]] = []
    error = None
    for m in messages:
        err = m.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                error = str(err)
            continue
        value = m.value()
        payload = payload_text(value) if value is not None else ""
        out.append((payload, int(m.partition() or 0), int(m.offset() or 0)))
    return out, error
