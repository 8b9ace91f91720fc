"""``score --plot``: each series with its reconstruction error, threshold and flagged points."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from stream_detector.errors import MissingExtra
from stream_detector.scoring import ScoredSeries

MAX_SERIES = 12


def require_matplotlib() -> None:
    """Raise `MissingExtra` unless matplotlib (the ``plot`` extra) is installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise MissingExtra("score --plot", "matplotlib", "plot")


def plot_scores(results: list[ScoredSeries], path: str | Path) -> Path:
    """Draw up to ``MAX_SERIES`` series (two panels each) into one PNG."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = results[:MAX_SERIES]
    fig, axes = plt.subplots(
        2 * len(shown), 1, figsize=(12, 2.6 * len(shown)), squeeze=False,
        gridspec_kw={"height_ratios": [2, 1] * len(shown)},
    )
    for i, r in enumerate(shown):
        ax_v, ax_e = axes[2 * i, 0], axes[2 * i + 1, 0]
        x = np.arange(len(r.series))
        ax_v.plot(x, r.series.values[:, 0], lw=0.8, color="tab:blue")
        flagged = r.is_anomaly
        ax_v.scatter(x[flagged], r.series.values[flagged, 0], s=6, color="tab:red",
                     label="flagged", zorder=3)
        ax_v.set_title(f"{r.series.key}", fontsize=9, loc="left")
        ax_e.plot(x, r.score, lw=0.8, color="tab:gray", label="reconstruction error")
        ax_e.plot(x, r.threshold, lw=0.8, ls="--", color="tab:red", label="threshold")
        ax_e.set_yscale("symlog", linthresh=0.1)
        if i == 0:
            ax_v.legend(loc="upper right", fontsize=7)
            ax_e.legend(loc="upper right", fontsize=7)
    if len(results) > MAX_SERIES:
        fig.suptitle(f"first {MAX_SERIES} of {len(results)} series", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
