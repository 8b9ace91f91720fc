"""/metrics exposes every series the contract names (../shared/CONTRACT.md, Metrics)."""

from __future__ import annotations

import re
from pathlib import Path

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
