"""`tsops demo`: the whole loop ends by itself with --duration and prints its timeline."""

from __future__ import annotations

import json

from conftest import free_port, run_cli


def test_demo_runs_the_loop_and_prints_its_timeline(tmp_path):
    result = run_cli(
        "demo", "--dir", str(tmp_path / "demo"), "--entities", "4", "--seconds", "90",
        "--duration", "240", "--port", str(free_port()), "--json",
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    timeline = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("drift_injected_at", "retrains", "promotions", "mae_before_drift", "mae_after_drift",
                "mae_after_promotion"):  # fmt: skip
        assert key in timeline
    assert isinstance(timeline["retrains"], list) and isinstance(timeline["promotions"], list)
    stream = timeline["stream"]
    assert stream["processed"] > 0 and stream["predictions"] > 0
    # Drift makes the first champion worse than it was before it.
    assert timeline["mae_after_drift"] > timeline["mae_before_drift"]
    # The loop reacted: a retrain was decided, with its reason; a promotion names the new champion.
    assert timeline["retrains"], "no retrain was triggered"
    assert all(r["reason"] for r in timeline["retrains"])
    for p in timeline["promotions"]:
        assert p["champion"] != timeline["first_champion"]
