"""Benchmarks on generated series with known anomalies: the quality test's and the demo's.

Fit on the clean prefix, score every series through the offline path, fold the service's
incidents and match them to the injected spans (``stream_detector.synthetic``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_detector.evaluation.events import EventScore, event_score
from stream_detector.evaluation.harness import Log, Scored, _cached, _incidents, _quiet
from stream_detector.scoring import decide_series, window_scores
from stream_detector.training import TrainOptions, train


@dataclass
class SyntheticResult:
    name: str
    events: dict[str, EventScore]  # label -> TP/FP/FN
    seconds: float


def run_synthetic(
    decisions: Mapping[str, Mapping[str, Any]],
    *,
    name: str = "synthetic",
    kind: str = "conv1d",
    n_series: int = 4,
    length: int = 1500,
    seed: int = 1,
    anomalies_per_series: int = 4,
    clean_keys: int = 0,
    epochs: int = 30,
    max_windows: int = 100_000,
    score_prefix: bool = False,
    cache: Path | None = None,
    log: Log = _quiet,
) -> SyntheticResult:
    """Generated series with injected anomalies (``stream_detector.synthetic``): fit on
    the clean prefix, score every series, fold the service's incidents (gap half a
    window) and match them to the injected spans (tolerance one window).

    The defaults are the quality test's (tests/test_quality.py); ``demo_options`` gives
    the demo's. ``score_prefix``: count incidents in the clean prefix too (the demo
    streams it; the quality test does not count it).
    """
    from stream_detector.synthetic import generate

    t0 = time.perf_counter()
    data = generate(n_series=n_series, length=length, seed=seed,
                    anomalies_per_series=anomalies_per_series, clean_keys=clean_keys)
    window = 64
    full = _synthetic_dataset(data)
    opts = TrainOptions(kind=kind, window=window, epochs=epochs, max_windows=max_windows,
                        seed=seed, train_fraction=data.clean_prefix / length)
    tag = f"{name}-{kind}-n{n_series}-l{length}-s{seed}-a{anomalies_per_series}-c{clean_keys}" \
        f"-e{epochs}-m{max_windows}"
    trained: dict[str, Scored] = {}

    def fit(key: str) -> Scored:  # one model for every series, trained on first need
        if not trained:
            art = train(full, opts)
            scores, series_idx, end_idx = window_scores(art, full)
            for i, s in enumerate(full.series):
                sel = series_idx == i
                trained[s.key] = Scored(scores[sel], end_idx[sel], art.thresholds,
                                        art.value_ranges, art.periods_at(art.hop))
        return trained[key]

    per_series = {
        s.key: _cached(cache, tag, s.key, functools.partial(fit, s.key)) for s in full.series
    }
    events: dict[str, EventScore] = {}
    for label, spec in decisions.items():
        total = EventScore(0, 0, 0)
        for s in full.series:
            sc = per_series[s.key]
            r = decide_series(sc.decider(spec), sc.thresholds, s, sc.scores, sc.end_idx)
            inc = _incidents(r, sc.end_idx, window, gap=window // 2)
            if not score_prefix:
                inc = [(a, b) for a, b in inc if a >= data.clean_prefix]
            truth = [(x.start, x.end) for x in data.anomalies if x.key == s.key]
            total = total + event_score(inc, truth, tolerance=window)
        events[label] = total
    res = SyntheticResult(name, events, time.perf_counter() - t0)
    log(f"  {name}: " + ", ".join(
        f"{k} P {e.precision:.2f} R {e.recall:.2f}" for k, e in events.items()))
    return res


def demo_options() -> dict[str, Any]:
    """``run_synthetic`` arguments that reproduce ``stream-detector demo`` at its defaults
    (demo.py: 40 series of 1500 points, one anomaly in three of every four, 15 epochs)."""
    return {"name": "demo", "n_series": 40, "length": 1500, "seed": 0,
            "anomalies_per_series": 1, "clean_keys": 10, "epochs": 15,
            "max_windows": 20_000, "score_prefix": True}


def _synthetic_dataset(data: Any) -> Any:
    """The generated series as ``read_dataset`` reads them from a long CSV."""
    import tempfile

    from stream_detector.datasets import read_dataset
    from stream_detector.synthetic import write_long_csv

    with tempfile.TemporaryDirectory() as tmp:
        return read_dataset([write_long_csv(data, Path(tmp) / "series.csv")], "long")
