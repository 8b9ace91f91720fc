"""``stream-detector backtest``: replay the same data through the serving model and a
candidate, compare the events each would have raised.

Each model scores and decides the data as ``score`` does (its own decider, per key, in
stream order); its windows become incidents by the service's rule
(:func:`~stream_detector.evaluation.events.incidents_from_decisions`). The report gives
each model's events, their overlap and, where the data has labels, each one's event-level
precision, recall and F1. The candidate is *worse* when its F1 is below the serving
model's by more than ``margin``; without labels the serving model's events are the
reference, and the candidate is worse when its F1 against them is below ``1 - margin``
(a guard against drift, not a judgement of quality).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from stream_detector.artifact import Artifact
from stream_detector.datasets import Dataset
from stream_detector.decision import resolve_spec
from stream_detector.errors import InputError
from stream_detector.evaluation.events import EventScore, event_score, incidents_from_decisions
from stream_detector.gaps import GapPolicy, gap_policy
from stream_detector.scoring import ScoredSeries, score_dataset

GapsFor = Callable[[int], GapPolicy]  # a model's window -> its gap policy

Span = tuple[int, int]


@dataclass(frozen=True)
class Side:
    """One model's result on the data: its version, events, and (with labels) its score."""

    version: str
    events: int
    windows_flagged: int
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None


@dataclass(frozen=True)
class Report:
    """What ``backtest`` prints: both sides, the overlap of their events, the verdict."""

    serving: Side
    candidate: Side
    # serving events the candidate also raised, candidate events the serving model raised
    serving_matched: int
    candidate_matched: int
    labelled: bool
    margin: float
    passed: bool
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        rows = [("", "serving", "candidate"),
                ("version", self.serving.version, self.candidate.version),
                ("events", str(self.serving.events), str(self.candidate.events)),
                ("windows flagged", str(self.serving.windows_flagged),
                 str(self.candidate.windows_flagged)),
                ("events in the other's", f"{self.serving_matched}/{self.serving.events}",
                 f"{self.candidate_matched}/{self.candidate.events}")]
        if self.labelled:
            for name in ("precision", "recall", "f1"):
                rows.append((name, f"{getattr(self.serving, name):.3f}",
                             f"{getattr(self.candidate, name):.3f}"))
        w = max(len(r[0]) for r in rows)
        v = max(len(r[1]) for r in rows)
        lines = [f"{a:<{w}}  {b:<{v}}  {c}" for a, b, c in rows]
        lines.append(("PASS: " if self.passed else "FAIL: ") + self.verdict)
        return "\n".join(lines)


def _window_rows(r: ScoredSeries) -> np.ndarray:
    """The rows at which the series' windows end."""
    return np.flatnonzero(~np.isnan(r.window_score))


def series_events(r: ScoredSeries, gap: int) -> list[Span]:
    """The series' incidents as inclusive row ranges (first to last anomalous window)."""
    rows = _window_rows(r)
    spans = incidents_from_decisions(r.is_anomaly[rows], r.excursion[rows], gap)
    return [(int(rows[a]), int(rows[b])) for a, b in spans]


def label_spans(labels: np.ndarray) -> list[Span]:
    """Runs of rows labelled anomalous (label > 0) as inclusive ranges."""
    flag = np.concatenate([[False], np.asarray(labels) > 0, [False]])
    edges = np.flatnonzero(np.diff(flag.astype(np.int8)))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def _side(art: Artifact, results: list[ScoredSeries], events: list[list[Span]],
          truth: list[list[Span]] | None) -> Side:
    flagged = sum(int(r.is_anomaly[_window_rows(r)].sum()) for r in results)
    n = sum(len(e) for e in events)
    if truth is None:
        return Side(art.version, n, flagged)
    total = EventScore(0, 0, 0)
    for ev, tr in zip(events, truth):
        total = total + event_score(ev, tr, tolerance=art.window)
    return Side(art.version, n, flagged, total.precision, total.recall, total.f1)


def _score(art: Artifact, dataset: Dataset, max_batch: int, method: str | None,
           params: Mapping[str, str] | None, gaps: GapsFor | None = None
           ) -> list[ScoredSeries]:
    try:
        spec = resolve_spec(art.metadata.get("decision"), method, params)
    except ValueError as exc:
        raise InputError(f"--decision: {exc}") from None
    return score_dataset(art, dataset, max_batch=max_batch, decision=spec,
                         gaps=None if gaps is None else gaps(art.window))


def check_compatible(art: Artifact, dataset: Dataset, what: str) -> None:
    """Refuse data the model cannot score, naming the model and the file."""
    if (dataset.fmt == "records") != art.record_mode:
        kind = "records" if art.record_mode else "time series"
        raise InputError(f"{what}: model was trained on {kind}; got --format {dataset.fmt}")
    for s in dataset.series:
        if len(s) < art.window:
            raise InputError(f"{s.source}: series {s.key!r} has {len(s)} point(s), fewer "
                             f"than the {what} model's window of {art.window}")


def compare(serving: Artifact, candidate: Artifact, dataset: Dataset, margin: float = 0.05,
            max_batch: int = 1024, gap: int | None = None, method: str | None = None,
            params: Mapping[str, str] | None = None, gaps: GapsFor | None = None) -> Report:
    """Backtest ``candidate`` against ``serving`` on ``dataset``.

    ``margin``: how much lower the candidate's F1 may be (see the module docstring);
    ``gap``: normal windows allowed inside one incident (default: half the window, as
    ``run``); ``method``/``params``: a decision method or parameters instead of each
    artifact's, as ``run --decision`` would apply to both; ``gaps``: the gap policy for
    a model's window (``--gap-*``), for both.
    """
    if not 0.0 <= margin < 1.0:
        raise InputError(f"--margin must be in [0, 1), got {margin}")
    check_compatible(serving, dataset, "serving")
    check_compatible(candidate, dataset, "candidate")
    res_s = _score(serving, dataset, max_batch, method, params, gaps)
    res_c = _score(candidate, dataset, max_batch, method, params, gaps)
    ev_s = [series_events(r, gap if gap is not None else max(1, serving.window // 2))
            for r in res_s]
    ev_c = [series_events(r, gap if gap is not None else max(1, candidate.window // 2))
            for r in res_c]
    truth: list[list[Span]] | None = None
    if all(s.labels is not None for s in dataset.series):  # a label column: the truth
        truth = [label_spans(s.labels) for s in dataset.series if s.labels is not None]
    labelled = truth is not None
    side_s = _side(serving, res_s, ev_s, truth)
    side_c = _side(candidate, res_c, ev_c, truth)
    # overlap: an event of one side is matched when an event of the other overlaps it
    tol = max(serving.window, candidate.window)
    s_matched = sum(event_score(c, s, tolerance=0).tp for s, c in zip(ev_s, ev_c))
    c_matched = sum(event_score(s, c, tolerance=0).tp for s, c in zip(ev_s, ev_c))
    if labelled:
        assert side_s.f1 is not None and side_c.f1 is not None
        passed = side_c.f1 >= side_s.f1 - margin
        verdict = (f"candidate F1 {side_c.f1:.3f} vs serving {side_s.f1:.3f} "
                   f"(allowed {margin:g} lower)")
    else:
        ref = EventScore(0, 0, 0)
        for s, c in zip(ev_s, ev_c):
            ref = ref + event_score(c, s, tolerance=tol)
        passed = ref.f1 >= 1.0 - margin if side_s.events or side_c.events else True
        verdict = (f"no labels: candidate F1 against the serving model's events "
                   f"{ref.f1 if side_s.events or side_c.events else 1.0:.3f} "
                   f"(at least {1.0 - margin:.3f} needed)")
    return Report(side_s, side_c, s_matched, c_matched, labelled, margin, passed, verdict)


def run_backtest(cfg: Mapping[str, Any]) -> int:
    """``stream-detector backtest``: print the report; 0 when the candidate passes, 1 when
    it is worse by more than ``--margin``."""
    import json
    from pathlib import Path

    from stream_detector.artifact import load_artifact

    serving = load_artifact(cfg["serving"])
    candidate = load_artifact(cfg["candidate"])
    if cfg["max_batch"] < 1:
        raise InputError(f"--max-batch must be >= 1, got {cfg['max_batch']}")
    if cfg.get("incident_gap") is not None and cfg["incident_gap"] < 0:
        raise InputError(f"--incident-gap must be >= 0, got {cfg['incident_gap']}")
    dataset = _dataset(cfg, serving)

    def gaps(window: int) -> GapPolicy:
        try:
            return gap_policy(cfg.get("gap_policy"), cfg.get("gap_max_fill"),
                              cfg.get("gap_factor"), window)
        except ValueError as exc:
            raise InputError(f"--gap-*: {exc}") from None

    gaps(2)
    report = compare(serving, candidate, dataset, cfg["margin"], cfg["max_batch"],
                     cfg.get("incident_gap"), cfg.get("decision"), cfg.get("decision_param"),
                     gaps)
    print(report.text())
    if cfg.get("output"):
        out = Path(cfg["output"])
        if not out.parent.exists():
            raise InputError(f"{out}: directory {out.parent} does not exist")
        out.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return 0 if report.passed else 1


def _dataset(cfg: Mapping[str, Any], art: Artifact) -> Dataset:
    """The data to replay: the ``--input`` CSV file(s), or a range of ``--topic``."""
    from stream_detector.datasets import read_dataset

    if cfg.get("input") and cfg.get("topic"):
        raise InputError("give --input CSV file(s) or --topic, not both")
    if cfg.get("input"):
        return read_dataset(cfg["input"], cfg["format"], cfg["timestamp_policy"])
    if cfg.get("topic"):
        if not cfg.get("bootstrap_servers"):
            raise InputError("--topic needs --bootstrap-servers")
        from stream_detector.backtest_topic import read_topic

        return read_topic(cfg, art)
    raise InputError("nothing to replay: give --input CSV file(s) or --topic")
