"""confluent-kafka client settings, shared by the source, the sinks and `tsops replay`."""

from __future__ import annotations

from typing import Any

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
