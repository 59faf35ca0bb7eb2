"""Prometheus figures as the dashboard uses them: counters and histograms summed over chosen
label sets, from an in-process registry (the serving app's own metrics) or from scraped text
(a stream worker's `/metrics`), and quantiles of the increase between two readings, computed
as Prometheus' `histogram_quantile` does (linear within a bucket)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Labels = dict[str, str]
Selector = Callable[[Labels], bool]


def _everything(_: Labels) -> bool:
    return True


@dataclass
class Histogram:
    """Cumulative bucket counts (by upper bound, ascending), count and sum."""

    buckets: dict[float, float] = field(default_factory=dict)
    count: float = 0.0
    total: float = 0.0

    def minus(self, earlier: Histogram | None) -> Histogram:
        """The observations between `earlier` and this reading (a reset counts from zero)."""
        if earlier is None or self.count < earlier.count:
            return self
        return Histogram(
            {le: c - earlier.buckets.get(le, 0.0) for le, c in self.buckets.items()},
            self.count - earlier.count,
            self.total - earlier.total,
        )

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 < q < 1); None without observations. Observations above the last
        finite bucket report that bucket's bound, as Prometheus does."""
        if self.count <= 0:
            return None
        rank = q * self.count
        lower, below = 0.0, 0.0
        for le in sorted(self.buckets):
            cumulative = self.buckets[le]
            if cumulative >= rank:
                if math.isinf(le):
                    return lower
                inside = cumulative - below
                return lower + (le - lower) * ((rank - below) / inside if inside > 0 else 1.0)
            lower, below = (le if not math.isinf(le) else lower), cumulative
        return lower


@dataclass
class Reading:
    """One reading of every sample: name → list of (labels, value)."""

    samples: dict[str, list[tuple[Labels, float]]] = field(default_factory=dict)

    @classmethod
    def of(cls, families: Iterable[Any]) -> Reading:
        out: dict[str, list[tuple[Labels, float]]] = {}
        for family in families:
            for s in family.samples:
                out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
        return cls(out)

    @classmethod
    def parse(cls, text: str) -> Reading:
        from prometheus_client.parser import text_string_to_metric_families

        return cls.of(text_string_to_metric_families(text))

    def total(self, name: str, where: Selector = _everything) -> float | None:
        """Sum of a sample over the label sets `where` accepts; None if the metric is absent."""
        rows = self.samples.get(name)
        if rows is None:
            return None
        return sum(v for labels, v in rows if where(labels))

    def by_label(self, name: str, label: str, where: Selector = _everything) -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, v in self.samples.get(name, []):
            if where(labels):
                key = labels.get(label, "")
                out[key] = out.get(key, 0.0) + v
        return out

    def histogram(self, name: str, where: Selector = _everything) -> Histogram | None:
        """A histogram summed over the accepted label sets (`name` without `_bucket`)."""
        rows = self.samples.get(f"{name}_bucket")
        if rows is None:
            return None
        h = Histogram()
        for labels, v in rows:
            if where(labels):
                le = float(labels["le"])
                h.buckets[le] = h.buckets.get(le, 0.0) + v
        h.count = self.total(f"{name}_count", where) or 0.0
        h.total = self.total(f"{name}_sum", where) or 0.0
        return h
