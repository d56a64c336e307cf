"""Axis and file helpers shared by the figure modules (plots.py, metric_plots.py, budget_plots.py).

Matplotlib runs on the Agg backend (no display on a cluster node); figures are written as PNG
through the atomic writer of runners/rows.py, so an interrupted run never leaves half a file.
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import rows as rowsmod  # noqa: E402


def wide_axis(ax, values: np.ndarray, pool: np.ndarray, which: str) -> None:
    """Linear axis for values within two decades, log for wider positive ones, symlog otherwise
    (energies of failing samplers reach 1e12 while the reference sits near -40)."""
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return
    lo, hi = np.quantile(v, [0.01, 0.99])
    set_scale = ax.set_xscale if which == "x" else ax.set_yscale
    if lo > 0 and hi / lo < 100:
        return
    if lo > 0:
        set_scale("log")
        return
    p = pool[np.isfinite(pool)]
    spread = np.subtract(*np.quantile(p, [0.75, 0.25])) if len(p) else 1.0
    scale = max(abs(float(np.median(p))) if len(p) else 1.0, float(spread), 1e-3)
    linthresh = 10 ** np.ceil(np.log10(scale))
    set_scale("symlog", linthresh=linthresh)
    # At most ~6 major ticks: energies of failing samplers span up to 20 decades.
    decades = np.log10(max(abs(lo), abs(hi), linthresh) / linthresh) + 1
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(matplotlib.ticker.SymmetricalLogLocator(
        linthresh=linthresh, base=10 ** max(1, int(np.ceil(decades / 6)))))
    axis.set_minor_locator(matplotlib.ticker.NullLocator())


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """PNG through the atomic writer of runners/rows.py (same mode policy as every results file);
    ``bbox_inches="tight"`` keeps legends placed outside the axes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    rowsmod.write_bytes(path, buf.getvalue())
    return path


def plain_ticks(ax, which: str = "y") -> None:
    """No offset or scientific-notation tick labels (``1e-11+1e-3``) on a linear axis; a nearly
    constant range is widened so ticks stay readable."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    if axis.get_scale() != "linear":
        return
    fmt = matplotlib.ticker.ScalarFormatter(useOffset=False)
    fmt.set_scientific(False)
    axis.set_major_formatter(fmt)
    lo, hi = ax.get_ylim() if which == "y" else ax.get_xlim()
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    floor = max(abs(mid) * 0.05, 1e-12)
    if half < floor:  # e.g. ESS 0.001 ± 1e-11 on every seed
        (ax.set_ylim if which == "y" else ax.set_xlim)(mid - floor, mid + floor)
        axis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
