"""Figures (seaborn on the Agg backend, PNG), pure functions of the results files.

* ``energy_<target>.png``: energy histograms of every sampler's samples (all ok seeds pooled)
  over the reference, on bins spanning the reference's 0.5-99.5 % energy range; the legend
  (outside the axes) gives the share of each sampler's samples outside that range (±inf
  included, NaN counted apart), and a sampler entirely outside is an arrow at the edge it lies
  beyond (all NaN: an X); a side panel shows every set's full range (box plots, symlog axis),
  since early or failing samplers often lie far outside.
* ``distances_<target>.png``: the same for interatomic distances (particle targets).
* ``gmm40_samples.png``: GMM-40 samples (first ok seed) over contours of the exact log-density.
* ``metric_<name>.png``: each metric against the energy evaluations spent (runners/metric_plots.py).

Every sampler has one colour in every figure (``runners.style.sampler_color``: a fixed colour
per packaged sampler, plugins hashed), and figures are written through the atomic writers of runners/rows.py.

Samples are read from ``OUT/cells/<cell_key>/samples.npy``; references through the target.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

from .figure_axes import plain_ticks, save_figure, wide_axis

import matplotlib.pyplot as plt  # noqa: E402  (Agg selected by figure_axes)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402

import targets  # noqa: E402
from targets import ReferenceDataError  # noqa: E402
from targets.particles import pair_distances  # noqa: E402

from . import rows as rowsmod  # noqa: E402
from . import style  # noqa: E402
from .metric_plots import metric_vs_evals  # noqa: E402

N_BINS = 60
# Matplotlib 3.10 replaced boxplot(vert=False) by orientation="horizontal".
_HORIZONTAL = ({"orientation": "horizontal"}
               if tuple(int(p) for p in matplotlib.__version__.split(".")[:2]) >= (3, 10)
               else {"vert": False})


def _samples(out: Path, row: pd.Series) -> np.ndarray | None:
    for path in (out / "cells" / str(row["cell_key"]) / rowsmod.SAMPLES_FILE, row.get("samples_file")):
        if isinstance(path, (str, Path)) and path and Path(path).is_file():
            return np.load(path)
    return None


def pooled_samples(out: Path, df: pd.DataFrame, target: str) -> dict[str, np.ndarray]:
    """sampler -> samples ``[n, dim]`` of all ok cells of ``target`` (seeds pooled)."""
    res: dict[str, list] = {}
    sub = df[(df["target"] == target) & (df["status"] == "ok")]
    for _, row in sub.iterrows():
        x = _samples(out, row)
        if x is not None:
            res.setdefault(str(row["sampler"]), []).append(x)
    return {k: np.concatenate(v) for k, v in res.items()}


def _reference(target) -> np.ndarray | None:
    try:
        return target.reference("test").numpy()
    except ReferenceDataError:
        return None


def _energies(target, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return target.energy(torch.as_tensor(x, dtype=torch.float32)).double().numpy()


def _distances(target, x: np.ndarray) -> np.ndarray:
    xp = torch.as_tensor(x, dtype=torch.float32).reshape(-1, target.n_particles, target.spatial_dim)
    return pair_distances(xp).reshape(-1).numpy()


def reference_bins(ref_values: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Bin edges over the 0.5-99.5 % range of the reference values."""
    v = ref_values[np.isfinite(ref_values)]
    lo, hi = np.quantile(v, [0.005, 0.995]) if len(v) else (0.0, 0.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n_bins + 1)


def _density(v: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Histogram normalised by the total count (mass outside the bins is left out)."""
    counts, _ = np.histogram(v, bins=edges)
    return counts / max(1, len(v)) / np.diff(edges)



def hist_figure(title: str, xlabel: str, ref: np.ndarray | None, by_sampler: dict,
                df: pd.DataFrame | None = None):
    """Left: densities on the reference's bins. Right: the full range of every set (box plots on a
    symlog axis), so samplers far outside the reference range are still visible. A sampler with
    no value inside the bins is drawn as an arrow at the edge it lies beyond, and says so in the
    legend. One legend, outside the axes. Returns the figure."""
    pool = ref if ref is not None else np.concatenate(list(by_sampler.values()))
    edges = reference_bins(pool)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.5, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    if ref is not None:
        ax.stairs(_density(ref, edges), edges, fill=True, color=style.REFERENCE_COLOR,
                  label="reference")
    else:
        title += " (no reference: bins from the samples)"
    names = style.sampler_order(by_sampler)
    colors = style.sampler_colors(names)
    pretty = {n: style.sampler_pretty(n, df) for n in names}
    outside = []
    for name in names:
        raw = np.asarray(by_sampler[name], dtype=float).ravel()
        v = raw[~np.isnan(raw)]  # ±inf are outside the range, on their side
        if not len(v):
            outside.append((name, None))
            continue
        below, above = float(np.mean(v < edges[0])), float(np.mean(v > edges[-1]))
        out_pct = 100 * (below + above)
        nan_note = f", {100 * (1 - len(v) / len(raw)):.1f}% NaN" if len(v) < len(raw) else ""
        if below + above < 1:
            ax.stairs(_density(v, edges), edges, lw=1.6, color=colors[name],
                      label=f"{pretty[name]} ({out_pct:.1f}% outside{nan_note})")
        else:
            outside.append((name, below >= above))
    if outside:  # markers at the edge the samples lie beyond, stacked so none hides another
        top = ax.get_ylim()[1] if ax.has_data() else 1.0
        for k, (name, low) in enumerate(outside):
            y = top * (0.92 - 0.08 * (k % 11))
            if low is None:  # every value NaN: nowhere to put it, an x at the right edge
                ax.plot([edges[-1]], [y], marker="X", ms=9, color=colors[name], ls="none",
                        clip_on=False, zorder=5, label=f"{pretty[name]}: every value NaN")
                continue
            x = edges[0] if low else edges[-1]
            ax.plot([x], [y], marker="<" if low else ">", ms=11,
                    color=colors[name], ls="none", clip_on=False, zorder=5,
                    label=f"{pretty[name]}: 100% {'below' if low else 'above'} this range "
                          f"(arrow; see right panel)")
    ax.set_xlim(edges[0], edges[-1])
    ax.set(title=title, xlabel=xlabel, ylabel="density")
    plain_ticks(ax, "x")
    sets = ([("reference", ref, style.REFERENCE_COLOR)] if ref is not None else []) + [
        (n, by_sampler[n], colors[n]) for n in names]
    sets = [(n, v[np.isfinite(v)], c) for n, v, c in sets]
    sets = [(n, v, c) for n, v, c in sets if len(v)]
    if sets:
        box = bx.boxplot([v for _, v, _ in sets], **_HORIZONTAL, whis=(1, 99), showfliers=False,
                         patch_artist=True, medianprops={"color": "black"})
        for patch, (_, _, c) in zip(box["boxes"], sets):
            patch.set_facecolor(c)
            patch.set_alpha(0.7)
        bx.set_yticks(range(1, len(sets) + 1),
                      [n if n == "reference" else pretty[n] for n, _, _ in sets], fontsize=8)
        wide_axis(bx, np.concatenate([v for _, v, _ in sets]), pool, "x")
        bx.axvspan(edges[0], edges[-1], color="0.9", zorder=0, label="left panel's range")
        bx.invert_yaxis()
    bx.set(title="full range (1-99 %)", xlabel=xlabel)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8,
               frameon=False)
    fig.tight_layout()
    return fig


def _hist_figure(title, xlabel, ref, by_sampler, path: Path, df=None) -> Path:
    return save_figure(hist_figure(title, xlabel, ref, by_sampler, df), path)


def energy_histograms(out: Path, df: pd.DataFrame, fig_dir: Path) -> list[Path]:
    paths = []
    for t in dict.fromkeys(df["target"]):
        samples = pooled_samples(out, df, t)
        if not samples:
            continue
        target = targets.get(t)
        ref = _reference(target)
        e_ref = _energies(target, ref) if ref is not None else None
        e = {k: _energies(target, v) for k, v in samples.items()}
        paths.append(_hist_figure(f"{target.pretty_name}: energy", "energy E(x) [kT]", e_ref, e,
                                  fig_dir / f"energy_{t}.png", df))
    return paths


def distance_histograms(out: Path, df: pd.DataFrame, fig_dir: Path) -> list[Path]:
    paths = []
    for t in dict.fromkeys(df["target"]):
        target = targets.get(t)
        if not target.n_particles:
            continue
        samples = pooled_samples(out, df, t)
        if not samples:
            continue
        ref = _reference(target)
        d_ref = _distances(target, ref) if ref is not None else None
        d = {k: _distances(target, v) for k, v in samples.items()}
        paths.append(_hist_figure(f"{target.pretty_name}: interatomic distances",
                                  "interatomic distance [length]", d_ref, d,
                                  fig_dir / f"distances_{t}.png", df))
    return paths


def gmm_samples(out: Path, df: pd.DataFrame, fig_dir: Path, lim: float = 50.0) -> list[Path]:
    sub = df[(df["target"] == "gmm40") & (df["status"] == "ok")].sort_values("seed")
    first = {}
    for _, row in sub.iterrows():
        if row["sampler"] not in first:
            x = _samples(out, row)
            if x is not None:
                first[row["sampler"]] = x
    if not first:
        return []
    target = targets.get("gmm40")
    g = np.linspace(-lim, lim, 200)
    xx, yy = np.meshgrid(g, g)
    with torch.no_grad():
        lp = target.log_prob(torch.as_tensor(np.stack([xx, yy], -1), dtype=torch.float32)).numpy()
    panels = [("reference (exact)", target.reference("test").numpy())] + [
        (n, first[n]) for n in style.sampler_order(first)]
    ncol = min(4, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.2 * nrow), squeeze=False)
    for ax, (name, x) in zip(axes.flat, panels):
        ax.contourf(xx, yy, lp, levels=np.linspace(lp.max() - 16, lp.max(), 9), cmap="Blues",
                    extend="neither", alpha=0.7)
        color = "0.25" if name.startswith("reference") else style.sampler_color(name)
        ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.6, color=color, linewidths=0)
        title = name if name.startswith("reference") else style.sampler_pretty(name, df)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), title=title, aspect="equal")
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("GMM-40: samples (first ok seed) over log-density contours")
    fig.tight_layout()
    return [save_figure(fig, fig_dir / "gmm40_samples.png")]


def make_all(out: Path, df: pd.DataFrame, fig_dir: Path | None = None) -> list[Path]:
    """Every figure for the results of ``out``; returns the paths written."""
    out = Path(out)
    fig_dir = Path(fig_dir or out / "figures")
    fig_dir.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")
    return (energy_histograms(out, df, fig_dir) + distance_histograms(out, df, fig_dir)
            + gmm_samples(out, df, fig_dir) + metric_vs_evals(df, fig_dir))
