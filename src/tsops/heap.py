"""The cyclic garbage collector of a long-running process (a stream worker, a server).

Start-up objects (MLflow, Feast, torch, pandas: ~550,000 of them in a worker) live as long as
the process, so they are frozen out of the collector's scans. A stream micro-batch then keeps
tens of thousands of short-lived containers alive for a moment (a prediction record is a dict
of lists), which at CPython's default thresholds (700, 10, 10) meant ~140 young and ~1 full
collection per second under load, pauses of up to 85 ms in the poll loop. They are freed by
reference counting, not by the collector, so it can look at them far less often.
"""

from __future__ import annotations

import gc

# Allocations between two young collections (CPython's default: 700). A 50,000-event run of
# one worker (benchmarks/streaming.py's project): GC 0.74 → 0.34 s, longest pause 77-85 →
# 21-30 ms, throughput +7% (docs/benchmarks.md, "Issue 18").
YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Freeze what start-up allocated and collect young objects less often. Call once the
    process has loaded what it keeps (the model, the clients) and before it serves."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
