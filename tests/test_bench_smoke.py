"""Keep the benchmark script working (tiny sizes; no timing is asserted).

Both tests run ``scripts/bench.py``, which builds and fits models; the second also starts
the embedded broker. So they carry the marks ``make test-fast`` leaves out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_quick_runs_and_writes_every_model_figure(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--skip-e2e",
         "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["matmul_gflops"] > 0
    kinds = {m["kind"]: m for m in res["model_only"]}
    assert set(kinds) == {"conv1d-seq", "lstm", "conv1d"}  # the default kind first
    for m in kinds.values():
        assert m["seed_predict_windows_s"] > 0 and all(v > 0 for v in m["batched"].values())
        assert m["traces"] == 1, "the batched path never retraces"
        # the service's way, with the model's own CPU per window (read from the process)
        par = m["parallel"]
        assert set(par["cpu_us_per_window"]) == set(par["batched"]) == set(m["batched"])
        assert all(v > 0 for v in par["cpu_us_per_window"].values())
    assert "of matmul" in proc.stdout


@pytest.mark.slow
@pytest.mark.broker
def test_bench_quick_end_to_end_latency_and_memory_parts_run(tmp_path):
    """The broker-backed parts: every figure is there and comes from real deliveries."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--kinds", "conv1d",
         "--parts", "e2e,latency,memory", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    (e,) = res["end_to_end"]
    assert e["sustained_windows_s"] > 0 and e["messages"] >= e["keys"]
    assert e["steady_cores_detector"] > 0 and e["steady_cores_broker"] >= 0
    assert e["steady_detector_cpu_us_per_window"] > 0
    # the injected spikes open incidents, each seen live by the bench's own consumer
    assert e["latency_events"] > 0 and e["latency_not_received_live"] == 0
    assert 0 < e["latency_p50_ms"] <= e["latency_p99_ms"] <= e["latency_max_ms"]
    assert len(e["latency_timeline"]) == e["latency_events"]
    # who used the cores meanwhile, read from /proc: the detector and the bench did work
    assert e["cores_detector"] > 0 and e["cores_bench"] > 0 and e["cores_broker"] >= 0
    m = res["memory"]
    assert m["active"] >= m["series"] and m["rss_after_mb"] > 0
    assert "produce of the spike" in proc.stdout and "bytes per series" in proc.stdout


@pytest.mark.slow
@pytest.mark.broker
def test_bench_scale_part_runs_alone_at_run_defaults(tmp_path):
    """The scale part (``--scale``), tiny: every row has figures from a real detector, its
    changelog holds every key, and a fresh detector restored them all."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--scale",
         "--scale-sizes", "50,100", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    rows = res["scale"]["rows"]
    assert [r["series"] for r in rows] == [50, 100]
    for r in rows:
        assert r["active"] >= r["series"] and r["rss_mb"] > 0
        assert r["changelog_keys"] == r["series"] and r["changelog_mean_bytes"] > 0
        assert r["restored_keys"] >= r["series"] and r["restart_s"] > 0
        assert r["extra_args"] == []  # run's defaults
    # at 50 and 100 series the RSS slope is within the processes' noise: either a
    # positive projection or none, never a negative one
    rss_1m = res["scale"]["projection_1m"]["rss_gb"]
    assert rss_1m is None or rss_1m > 0
    assert "RSS per active series, least-squares slope" in proc.stdout
    assert "train's defaults" in proc.stdout and "run's defaults" in proc.stdout
    assert "4. scale" in proc.stdout and "projected to 1M series" in proc.stdout
