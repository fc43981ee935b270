"""``benchmarks/bench_mock.py --quick --json``: the benchmark runs end to end and its last line has the
agreed shape (``ratio_short``, ``ratio_long``, ``lateness`` rows). No speed is asserted: the figures
come from the coordinator's run on a quiet machine, never from a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_mock.py"


def test_bench_mock_quick_json_prints_the_agreed_shape_as_its_last_line(clean_slate):
    run = subprocess.run([sys.executable, str(BENCH), "--quick", "--json"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert isinstance(out["ratio_short"], float) and isinstance(out["ratio_long"], float)
    assert [row["streams"] for row in out["lateness"]] == [2, 4, 8]   # --quick's levels (full run: 100, 200, 1000)
    for row in out["lateness"]:
        assert set(row) >= {"streams", "p50_ms", "p99_ms"}
        assert all(isinstance(row[k], float) for k in ("p50_ms", "p99_ms"))
        assert row["errors"] == 0 and row["responses"] >= row["streams"]
