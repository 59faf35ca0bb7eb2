"""Whether the worker's source can be reached. A source that can lose its server (Kafka)
keeps a `SourceHealth` and registers it here while it is open; the worker's metrics server
answers `/healthz` from the registered ones (200 live, 503 not) and exports them as gauges,
so an orchestrator restarts a worker whose broker has been gone too long. An outage is logged
when it starts, then once a period, and when it ends: never once per reconnection attempt."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger("tsops.streaming")

REPORT_EVERY_S = 60.0  # an outage still going on is logged again after this long


class SourceHealth:
    """Contacts and errors of one source's client; `alive()` turns false once the source has
    been unreachable for longer than `unreachable_after_s`."""

    def __init__(self, name: str, where: str, unreachable_after_s: float, *, quiet_after_s: float = 3.0):
        self.name = name
        self.where = where
        self.unreachable_after_s = unreachable_after_s
        self.quiet_after_s = quiet_after_s  # no answer for this long, in a client that talks
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._last_contact = time.monotonic()
        self._down_since: float | None = None
        self._reported_at: float | None = None

    def contact(self) -> None:
        """The server answered."""
        with self._lock:
            now = time.monotonic()
            if self._down_since is not None:
                log.warning("%s is reachable again after %.0f s", self.where, now - self._down_since)
            self._down_since = self._reported_at = None
            self._last_contact = now

    def quiet(self) -> None:
        """A period in which the client heard nothing, though it polls, fetches and heartbeats."""
        with self._lock:
            if time.monotonic() - self._last_contact > self.quiet_after_s:
                self._down(self._last_contact)

    def unreachable(self, error: str) -> None:
        """The client says it cannot reach any server."""
        with self._lock:
            self.last_error = error
            self._down(time.monotonic())

    def error(self, error: str) -> None:
        """A client error that alone is no outage (one connection of several failed)."""
        self.last_error = error

    def _down(self, since: float) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = since
        if self._reported_at is None:
            log.warning(
                "%s is unreachable (%s); retrying, the worker reports itself not live after %.0f s",
                self.where,
                self.last_error or "no answer",
                self.unreachable_after_s,
            )
            self._reported_at = now
        elif now - self._reported_at >= REPORT_EVERY_S:
            log.warning(
                "%s is still unreachable after %.0f s (%s)",
                self.where,
                now - self._down_since,
                self.last_error or "no answer",
            )
            self._reported_at = now

    def unreachable_for(self) -> float:
        down = self._down_since
        return 0.0 if down is None else time.monotonic() - down

    def alive(self) -> bool:
        return self.unreachable_for() <= self.unreachable_after_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "live": self.alive(),
            "unreachable_s": round(self.unreachable_for(), 1),
            "unreachable_after_s": self.unreachable_after_s,
            "last_error": self.last_error if self.unreachable_for() else None,
        }


_registered: dict[int, SourceHealth] = {}
_registry_lock = threading.Lock()


def register(health: SourceHealth) -> None:
    with _registry_lock:
        _registered[id(health)] = health


def unregister(health: SourceHealth) -> None:
    with _registry_lock:
        _registered.pop(id(health), None)


def sources() -> list[SourceHealth]:
    with _registry_lock:
        return list(_registered.values())


def report() -> tuple[bool, dict[str, Any]]:
    """(live, body) for `/healthz`: live while every registered source is."""
    states = [h.as_dict() for h in sources()]
    live = all(s["live"] for s in states)
    return live, {"status": "ok" if live else "unreachable", "sources": states}
