"""Figures of a grid with a budget axis: quality against compute, one line per sampler.

``budget_<target>_<metric>.png``: two panels, the metric's mean ± s.e.m. over ok seeds (a line
through the rungs, a shaded ±1 s.e.m. band) against the energy evaluations the cells spent
(fit + sampling, log axis) and against their wall seconds (fit + sampling, log axis); the y axis
is logarithmic when the means span more than a factor ``LOG_Y_SPAN``. A solid
line is a sampler whose rungs continued from the rung below, a dashed one a sampler that ran
fresh at every rung (runners/ladder.py). Where the calibration floor of the metric is known at
the rows' ``n_eval`` (reference vs reference, docs/metrics.md "Calibration floors", measured at
n = 1000), it is a grey band (mean ± std over repeats): no sampler can be expected below it.

Pure functions of the results frame (runners/budget_tables.py's ``budget_points``); never runs a
sampler.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from . import style  # noqa: E402
from .budget_tables import budget_points  # noqa: E402
from .figure_axes import save_figure  # noqa: E402

# Reference vs reference at n = 1000 (val 1000 vs test 1000; GMM-40 exact vs exact): mean and
# std over 10 repeats, the "ours (spec v1)" column of docs/metrics.md "Calibration floors".
FLOOR_N = 1000
FLOORS = {
    "gmm40": {"x_w2": (4.487, 0.724), "energy_w1": (0.063, 0.026), "energy_w2": (0.117, 0.034),
              "energy_tvd": (0.190, 0.012)},
    "dw4": {"x_w2": (1.784, 0.030), "energy_w2_sq": (0.022, 0.015), "energy_w2": (0.143, 0.045),
            "energy_w1": (0.103, 0.028), "dist_tvd": (0.0880, 0.0047),
            "dist_tvd_official": (0.0878, 0.0047), "dist_w2_sq": (0.0053, 0.0045),
            "energy_tvd": (0.211, 0.017), "x_w2_aligned": (0.316, 0.028)},
    "lj13": {"x_w2": (3.532, 0.022), "energy_w2_sq": (0.287, 0.119), "energy_w2": (0.523, 0.114),
             "energy_w1": (0.360, 0.109), "dist_tvd": (0.0188, 0.0010),
             "dist_tvd_official": (0.0188, 0.0010), "energy_tvd": (0.211, 0.018)},
}
LOG_Y_SPAN = 20.0
AXES = (("energy_evals", "energy evaluations spent (fit + sampling)"),
        ("seconds", "wall seconds (fit + sampling)"))


def floor(df: pd.DataFrame, target: str, metric: str) -> tuple[float, float] | None:
    """(mean, std) of the calibration floor when every row of ``target`` has n_eval = 1000."""
    value = FLOORS.get(target, {}).get(metric)
    if value is None or "n_eval" not in df.columns:
        return None
    n = pd.to_numeric(df.loc[df["target"] == target, "n_eval"], errors="coerce")
    return value if len(n) and (n == FLOOR_N).all() else None


def budget_figure(df: pd.DataFrame, pts: pd.DataFrame, target: str, metric: str):
    sub = pts[(pts["target"] == target) & (pts["metric"] == metric)]
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4), sharey=True)
    band = floor(df, target, metric)
    # An early learned sampler can sit 100x above the rest (smoke iDEM on DW-4: x_w2 ~100 vs ~2):
    # a log y axis keeps every line readable when the means span more than LOG_Y_SPAN.
    means = sub["mean"].to_numpy(float)
    means = means[np.isfinite(means)]
    log_y = bool(len(means)) and means.min() > 0 and means.max() / means.min() > LOG_Y_SPAN
    for ax, (xcol, xlabel) in zip(axes, AXES):
        if band is not None:
            ax.axhspan(band[0] - band[1], band[0] + band[1], color="0.6", alpha=0.3, lw=0,
                       label="reference floor (n=1000)")
            ax.axhline(band[0], color="0.45", lw=0.8, ls=":")
        for s in style.sampler_order(sub["sampler"]):
            g = sub[sub["sampler"] == s].sort_values("budget")
            x, y = g[xcol].to_numpy(float), g["mean"].to_numpy(float)
            sem = np.nan_to_num(g["sem"].to_numpy(float))
            keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
            if not keep.any():
                continue
            c = style.sampler_color(s)
            cont = bool(g["continued"].any())
            ax.plot(x[keep], y[keep], marker="o", ms=4, color=c, ls="-" if cont else "--",
                    label=style.sampler_pretty(s, df) + ("" if cont else " (fresh each rung)"))
            low = np.maximum(y - sem, y / 10) if log_y else y - sem  # no band through 0 on log
            ax.fill_between(x[keep], low[keep], (y + sem)[keep], color=c, alpha=0.18, lw=0)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        if log_y:
            ax.set_yscale("log")
    info = style.metric_info(metric)
    axes[0].set_ylabel(textwrap.fill(style.metric_label(metric, direction=False), 34)
                       + f"\n({info.direction})")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
                   frameon=False, title="mean ± s.e.m.\nover ok seeds")
    fig.suptitle(f"{style.target_pretty(target, df)}: {info.display} ({metric}) against compute")
    fig.tight_layout()
    return fig


def make_all(df: pd.DataFrame, fig_dir: Path) -> list[Path]:
    """Every budget figure of ``df`` (none without a budget axis); returns the paths."""
    pts = budget_points(df)
    if pts.empty:
        return []
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")
    out = []
    for (t, m), _ in pts.groupby(["target", "metric"], sort=False):
        out.append(save_figure(budget_figure(df, pts, t, m), fig_dir / f"budget_{t}_{m}.png", dpi=100))
    return out
