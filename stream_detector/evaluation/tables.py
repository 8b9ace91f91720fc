"""The benchmarks' results as markdown tables (and JSON), with the published anchors."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream_detector.evaluation.events import EventScore
from stream_detector.evaluation.generated import SyntheticResult
from stream_detector.evaluation.harness import (
    NAB_ANCHORS,
    ODDS_ANCHORS,
    TELEMANOM,
    ChannelResult,
    NabReport,
    OddsRow,
)


def nab_table(rep: NabReport) -> str:
    lines = [
        "| detector | standard | reward_low_FP | reward_low_FN | decide µs/window |",
        "|---|---|---|---|---|",
    ]
    for label, s in rep.scores.items():
        us = 1e6 * rep.decide_seconds[label] / max(rep.windows, 1)
        lines.append(
            f"| stream_detector {rep.options['kind']} + `{label}` | "
            f"{s['standard']:.1f} | {s['reward_low_FP_rate']:.1f} | "
            f"{s['reward_low_FN_rate']:.1f} | {us:.1f} |"
        )
    for name, v in NAB_ANCHORS.items():
        lines.append(f"| {name} (NAB scoreboard) | {v:.1f} | | | |")
    return "\n".join(lines)


def odds_table(rows: Sequence[OddsRow]) -> str:
    anchors = ["AutoEncoder", "IForest", "HBOS", "PCA"]
    lines = [
        "| set | feedforward ROC-AUC | P@n | " + " | ".join(f"PyOD {a}" for a in anchors) + " |",
        "|---|---|---|" + "---|" * len(anchors),
    ]
    for r in rows:
        anc = ODDS_ANCHORS.get(r.name, {})
        cells = [f"{anc[a][0]:.4f} / {anc[a][1]:.4f}" if a in anc else "" for a in anchors]
        lines.append(
            f"| {r.name} | {r.roc_mean:.4f} ± {np.std(r.roc):.4f} | {r.prn_mean:.4f} | "
            + " | ".join(cells)
            + " |"
        )
    core = [r for r in rows if r.name in ODDS_ANCHORS]
    if core:
        mean = float(np.mean([r.roc_mean for r in core]))
        pyod = {a: np.mean([ODDS_ANCHORS[r.name][a][0] for r in core]) for a in anchors}
        lines.append(
            f"| mean of {len(core)} | {mean:.4f} | "
            f"{np.mean([r.prn_mean for r in core]):.4f} | "
            + " | ".join(f"{pyod[a]:.4f}" for a in anchors)
            + " |"
        )
    return "\n".join(lines)


def smap_table(results: Sequence[ChannelResult]) -> str:
    labels = list(results[0].events) if results else []
    lines = [
        "| channel | labelled | "
        + " | ".join(f"`{lb}` TP/FP/FN" for lb in labels)
        + " | telemanom TP/FP/FN |",
        "|---|---|" + "---|" * (len(labels) + 1),
    ]
    totals = {lb: EventScore(0, 0, 0) for lb in labels}
    tm_total = EventScore(0, 0, 0)
    for r in results:
        tm = EventScore(*TELEMANOM.get(r.name, (0, 0, 0)))
        tm_total = tm_total + tm
        cells = []
        for lb in labels:
            e = r.events[lb]
            totals[lb] = totals[lb] + e
            cells.append(f"{e.tp}/{e.fp}/{e.fn}")
        lines.append(
            f"| {r.name} ({r.spacecraft}) | {r.labelled} | "
            + " | ".join(cells)
            + f" | {tm.tp}/{tm.fp}/{tm.fn} |"
        )
    lines.append(
        "| **total** | "
        + str(sum(r.labelled for r in results))
        + " | "
        + " | ".join(f"{totals[lb].tp}/{totals[lb].fp}/{totals[lb].fn}" for lb in labels)
        + f" | {tm_total.tp}/{tm_total.fp}/{tm_total.fn} |"
    )
    lines.append(
        "| **P / R / F1** | | "
        + " | ".join(_prf(totals[lb]) for lb in labels)
        + f" | {_prf(tm_total)} |"
    )
    return "\n".join(lines)


def _prf(e: EventScore) -> str:
    return f"{e.precision:.2f} / {e.recall:.2f} / {e.f1:.3f}"


def cost_table(cost: Mapping[str, Mapping[str, float]]) -> str:
    lines = [
        "| decider | offline µs/window | online µs/window (batches of 256, 200 keys) "
        "| state bytes/key |",
        "|---|---|---|---|",
    ]
    for label, c in cost.items():
        lines.append(
            f"| `{label}` | {c['offline_us']:.1f} | {c['online_us']:.1f} | "
            f"{int(c['state_bytes'])} |"
        )
    return "\n".join(lines)


def summary_table(
    labels: Sequence[str],
    default: str,
    nab_rep: NabReport | None = None,
    smap: Sequence[ChannelResult] | None = None,
    demo: SyntheticResult | None = None,
    synthetic: SyntheticResult | None = None,
    cost: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """One row per decision method, one column per benchmark (blank where not run)."""
    lines = [
        "| decision | NAB standard | NAB low FP | NAB low FN | SMAP/MSL F1 | demo P / R "
        "| synthetic P / R | µs/window online |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        cells = []
        if nab_rep is not None and label in nab_rep.scores:
            sc = nab_rep.scores[label]
            cells += [f"{sc[p]:.1f}" for p in
                      ("standard", "reward_low_FP_rate", "reward_low_FN_rate")]
        else:
            cells += ["", "", ""]
        if smap:
            total = EventScore(0, 0, 0)
            for r in smap:
                total = total + r.events[label]
            cells.append(f"{total.f1:.3f}")
        else:
            cells.append("")
        for res in (demo, synthetic):
            e = res.events.get(label) if res is not None else None
            cells.append(f"{e.precision:.2f} / {e.recall:.2f}" if e is not None else "")
        c = (cost or {}).get(label)
        cells.append(f"{c['online_us']:.1f}" if c is not None else "")
        name = f"**`{label}`** (default)" if label == default else f"`{label}`"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_json(obj: Any) -> str:
    def default(o: Any) -> Any:
        if isinstance(o, EventScore):
            return {"tp": o.tp, "fp": o.fp, "fn": o.fn}
        if hasattr(o, "__dict__"):
            return o.__dict__
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(type(o))

    return json.dumps(obj, default=default, indent=1)
