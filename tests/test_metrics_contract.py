"""/metrics exposes every series the contract names (../shared/CONTRACT.md, Metrics)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest

from stream_detector import __version__
from stream_detector.metrics import Metrics

CONTRACT = Path(__file__).resolve().parents[2] / "shared" / "CONTRACT.md"


def _exposed() -> tuple[set[str], str]:
    """Sample names, family names (a labelled family shows before its first child) and
    the exposition text."""
    reg = Metrics.create().registry
    text = generate_latest(reg).decode()
    names = {ln.split("{")[0].split(" ")[0] for ln in text.splitlines()
             if ln and not ln.startswith("#")}
    names |= {fam.name for fam in reg.collect()}
    return names, text


def test_build_info_and_process_metrics() -> None:
    names, text = _exposed()
    assert f'stream_detector_build_info{{version="{__version__}"}} 1.0' in text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                 "process_start_time_seconds", "python_info"):
        assert name in names, name


@pytest.mark.skipif(not CONTRACT.exists(), reason=f"{CONTRACT} not found")
def test_every_metric_the_contract_names_is_exposed() -> None:
    names, _ = _exposed()
    section = CONTRACT.read_text().split("## Metrics", 1)[1]
    wanted = set(re.findall(r"`(stream_detector_[a-z_]+)", section))
    assert wanted
    missing = {w for w in wanted if w not in names and re.sub(r"_total$", "", w) not in names}
    assert not missing, f"named by the contract, not exposed: {sorted(missing)}"


def _lines(text: str) -> dict[str, str]:
    """Exposition lines by what precedes their value (HELP and TYPE lines whole)."""
    out = {}
    for ln in text.splitlines():
        name, _, value = ln.rpartition(" ") if not ln.startswith("#") else (ln, "", "")
        out[name] = value
    return out


def test_the_reconstruction_error_histogram_exposes_what_a_client_histogram_does() -> None:
    """Observed a batch at a time, it shows the samples, labels, help and buckets that
    prometheus_client's Histogram shows after observing the same values one by one."""
    from prometheus_client import CollectorRegistry, Histogram

    from stream_detector.metrics import _ERROR_BUCKETS

    name = "stream_detector_reconstruction_error"
    m = Metrics.create()
    ref_reg = CollectorRegistry()
    ref = Histogram(name, "Reconstruction error of scored windows.", buckets=_ERROR_BUCKETS,
                    registry=ref_reg)
    batches = [np.array([0.0, -1.0, 0.001, 0.0011, 0.005, 1.0, 2.4999, 99.0, 100.0, 1e6]),
               np.random.default_rng(0).lognormal(-3, 2, 300), np.zeros(0)]
    for b in batches:
        m.reconstruction_error.observe_many(b)
        for v in b.tolist():
            ref.observe(v)
    got = _lines(generate_latest(m.registry).decode())
    want = _lines(generate_latest(ref_reg).decode())
    want_keys = [k for k in want if k.startswith((name, f"# HELP {name}", f"# TYPE {name}"))]
    assert want_keys and all(k in got for k in want_keys), set(want_keys) - set(got)
    for k in want_keys:
        if k == f"{name}_sum":
            assert float(got[k]) == pytest.approx(float(want[k]), rel=1e-12)
        elif k != f"{name}_created":  # (when each was made)
            assert got[k] == want[k], k
    assert float(got[f"{name}_count"]) == sum(len(b) for b in batches)


def test_a_scrape_sees_the_counts_and_the_sum_of_the_same_batches() -> None:
    """Observed from one thread, scraped from another: never a batch half applied."""
    m = Metrics.create()
    get = m.registry.get_sample_value
    name = "stream_detector_reconstruction_error"
    ones = np.ones(64)
    stop = threading.Event()

    def observe() -> None:
        while not stop.is_set():
            m.reconstruction_error.observe_many(ones)

    t = threading.Thread(target=observe)
    t.start()
    try:
        for _ in range(300):
            samples = {s.name: s.value for fam in m.registry.collect() if fam.name == name
                       for s in fam.samples if s.labels.get("le") in (None, "+Inf")}
            assert samples[f"{name}_sum"] == samples[f"{name}_count"]  # every value is 1
            assert samples[f"{name}_count"] % 64 == 0
    finally:
        stop.set()
        t.join()
    assert get(f"{name}_count") == get(f"{name}_sum") > 0
