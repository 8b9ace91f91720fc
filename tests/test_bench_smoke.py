"""Keep the benchmark script working (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick_runs_and_writes_every_model_figure(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--skip-e2e",
         "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["matmul_gflops"] > 0
    kinds = {m["kind"]: m for m in res["model_only"]}
    assert set(kinds) == {"lstm", "conv1d"}
    for m in kinds.values():
        assert m["seed_predict_windows_s"] > 0 and all(v > 0 for v in m["batched"].values())
        assert m["traces"] == 1, "the batched path never retraces"
    assert "of matmul" in proc.stdout
