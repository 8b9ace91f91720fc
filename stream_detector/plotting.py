"""``score --plot``: every series with what the model expected, its reconstruction error,
threshold and flagged points, ``PER_PAGE`` series to a page (PNG files)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from stream_detector.errors import MissingExtra
from stream_detector.scaling import ScalerSet
from stream_detector.scoring import ScoredSeries

PER_PAGE = 12


def require_matplotlib() -> None:
    """Raise `MissingExtra` unless matplotlib (the ``plot`` extra) is installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise MissingExtra("score --plot", "matplotlib", "plot")


def page_paths(path: str | Path, n_series: int) -> list[Path]:
    """Where each page goes: ``path`` first, then ``<stem>-2<suffix>``, ... ."""
    out = Path(path)
    pages = max(1, -(-n_series // PER_PAGE))
    return [out if p == 0 else out.with_name(f"{out.stem}-{p + 1}{out.suffix}")
            for p in range(pages)]


def plot_scores(results: list[ScoredSeries], path: str | Path,
                scalers: ScalerSet | None = None, time_axis: bool = True) -> list[Path]:
    """Draw every series (two panels each), ``PER_PAGE`` to a PNG; returns the files.

    The value panel shows the first feature, the model's expected value (the
    reconstruction of each point by the window ending at it) and the expected band:
    expected +- the key's threshold in the feature's units (``scalers``: the artifact's,
    the threshold's scale). ``time_axis``: the x axis shows the timestamps (else the
    point's position: wide and records input)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = page_paths(path, len(results))
    for page, out in enumerate(paths):
        shown = results[page * PER_PAGE:(page + 1) * PER_PAGE]
        fig, axes = plt.subplots(
            2 * len(shown), 1, figsize=(12, 2.6 * max(1, len(shown))), squeeze=False,
            gridspec_kw={"height_ratios": [2, 1] * len(shown)},
        )
        for i, r in enumerate(shown):
            _draw(axes[2 * i, 0], axes[2 * i + 1, 0], r, scalers, time_axis, legend=i == 0)
        if len(paths) > 1:
            fig.suptitle(f"page {page + 1} of {len(paths)}: series "
                         f"{page * PER_PAGE + 1}-{page * PER_PAGE + len(shown)} of "
                         f"{len(results)}", fontsize=9)
        fig.tight_layout()
        fig.savefig(out, dpi=90)
        plt.close(fig)
    return paths


def _draw(ax_v: Any, ax_e: Any, r: ScoredSeries, scalers: ScalerSet | None,
          time_axis: bool, legend: bool) -> None:
    s = r.series
    x: np.ndarray = (np.asarray(s.ts * 1e6, dtype="datetime64[us]") if time_axis
                     else np.arange(len(s)))
    v = s.values[:, 0]
    ax_v.plot(x, v, lw=0.8, color="tab:blue", label="value")
    if r.expected is not None:
        exp = r.expected[:, 0]
        ax_v.plot(x, exp, lw=0.7, color="tab:green", label="expected")
        if scalers is not None:
            half = r.threshold * float(scalers.for_key(s.key).scale[0])
            ax_v.fill_between(x, exp - half, exp + half, color="tab:green", alpha=0.15,
                              lw=0, label="expected band")
    flagged = r.is_anomaly
    ax_v.scatter(x[flagged], v[flagged], s=6, color="tab:red", label="flagged", zorder=3)
    ax_v.set_title(f"{s.key}", fontsize=9, loc="left")
    ax_e.plot(x, r.score, lw=0.8, color="tab:gray", label="reconstruction error")
    ax_e.plot(x, r.threshold, lw=0.8, ls="--", color="tab:red", label="threshold")
    ax_e.set_yscale("symlog", linthresh=0.1)
    if legend:
        ax_v.legend(loc="upper right", fontsize=7)
        ax_e.legend(loc="upper right", fontsize=7)
