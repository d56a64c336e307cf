"""Figures (seaborn on the Agg backend, PNG), pure functions of the results files.

* ``energy_<target>.png``: energy histograms of every sampler's samples (all ok seeds pooled)
  over the reference, on bins spanning the reference's 0.5-99.5 % energy range; the legend gives
  the share of each sampler's samples outside that range; a side panel shows every set's full
  range (box plots, symlog axis), since early or failing samplers often lie far outside.
* ``distances_<target>.png``: the same for interatomic distances (particle targets).
* ``gmm40_samples.png``: GMM-40 samples (first ok seed) over contours of the exact log-density.
* ``metric_<name>.png``: each metric against the energy evaluations the cell spent (log axis),
  one panel per target, one colour per sampler.

Samples are read from ``OUT/cells/<cell_key>/samples.npy``; references through the target.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402

import targets  # noqa: E402
from targets import ReferenceDataError  # noqa: E402
from targets.particles import pair_distances  # noqa: E402

from . import rows as rowsmod  # noqa: E402
from .tables import metric_columns  # noqa: E402

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
    lo, hi = np.quantile(v, [0.005, 0.995])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n_bins + 1)


def _density(v: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Histogram normalised by the total count (mass outside the bins is left out)."""
    counts, _ = np.histogram(v, bins=edges)
    return counts / max(1, len(v)) / np.diff(edges)


def _wide_axis(ax, values: np.ndarray, pool: np.ndarray, which: str) -> None:
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


def _hist_figure(title: str, xlabel: str, ref: np.ndarray | None, by_sampler: dict, path: Path):
    """Left: densities on the reference's bins. Right: the full range of every set (box plots on a
    symlog axis), so samplers far outside the reference range are still visible."""
    pool = ref if ref is not None else np.concatenate(list(by_sampler.values()))
    edges = reference_bins(pool)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.5, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    if ref is not None:
        ax.stairs(_density(ref, edges), edges, fill=True, color="0.8", label="reference")
    else:
        title += " (no reference: bins from the samples)"
    names = sorted(by_sampler)
    colors = dict(zip(names, sns.color_palette("tab10", max(1, len(names)))))
    for name in names:
        v = by_sampler[name][np.isfinite(by_sampler[name])]
        out_pct = 100 * float(np.mean((v < edges[0]) | (v > edges[-1]))) if len(v) else 100.0
        ax.stairs(_density(v, edges), edges, lw=1.6, color=colors[name],
                  label=f"{name} ({out_pct:.1f}% outside)")
    ax.set(title=title, xlabel=xlabel, ylabel="density")
    ax.legend(fontsize=8, frameon=False)
    sets = ([("reference", ref)] if ref is not None else []) + [(n, by_sampler[n]) for n in names]
    sets = [(n, v[np.isfinite(v)]) for n, v in sets]
    sets = [(n, v) for n, v in sets if len(v)]
    if sets:
        bx.boxplot([v for _, v in sets], **_HORIZONTAL, whis=(1, 99), showfliers=False,
                   patch_artist=True, boxprops={"facecolor": "0.9"})
        bx.set_yticks(range(1, len(sets) + 1), [n for n, _ in sets], fontsize=8)
        _wide_axis(bx, np.concatenate([v for _, v in sets]), pool, "x")
        bx.axvspan(edges[0], edges[-1], color="0.85", zorder=0)
        bx.invert_yaxis()
    bx.set(title="full range (1-99 %)", xlabel=xlabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
        paths.append(_hist_figure(f"{target.pretty_name}: energy", "E(x)", e_ref, e,
                                  fig_dir / f"energy_{t}.png"))
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
        paths.append(_hist_figure(f"{target.pretty_name}: interatomic distances", "distance",
                                  d_ref, d, fig_dir / f"distances_{t}.png"))
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
    panels = [("reference (exact)", target.reference("test").numpy())] + sorted(first.items())
    ncol = min(4, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.2 * nrow), squeeze=False)
    for ax, (name, x) in zip(axes.flat, panels):
        ax.contourf(xx, yy, lp, levels=np.linspace(lp.max() - 16, lp.max(), 9), cmap="Blues",
                    extend="neither", alpha=0.7)
        ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.6, color="tab:red", linewidths=0)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), title=name, aspect="equal")
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("GMM-40: samples over log-density contours")
    fig.tight_layout()
    path = fig_dir / "gmm40_samples.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def metric_vs_evals(df: pd.DataFrame, fig_dir: Path) -> list[Path]:
    ok = df[df["status"] == "ok"].copy()
    if ok.empty:
        return []
    ok["energy_evals"] = pd.to_numeric(ok["energy_evals"], errors="coerce").clip(lower=1)
    paths = []
    tlist = list(dict.fromkeys(ok["target"]))
    palette = dict(zip(sorted(ok["sampler"].unique()), sns.color_palette("tab10", ok["sampler"].nunique())))
    for m in metric_columns(ok):
        fig, axes = plt.subplots(1, len(tlist), figsize=(3.6 * len(tlist), 3.3), squeeze=False)
        for ax, t in zip(axes[0], tlist):
            sub = ok[ok["target"] == t].assign(**{m: lambda d: pd.to_numeric(d[m], errors="coerce")})
            sub = sub[np.isfinite(sub[m])]
            ax.set_title(t)
            if sub.empty:
                ax.text(0.5, 0.5, "no finite values", ha="center", va="center",
                        transform=ax.transAxes, color="0.4")
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            sns.scatterplot(data=sub, x="energy_evals", y=m, hue="sampler", palette=palette,
                            ax=ax, s=40, legend=ax is axes[0][0])
            ax.set_xscale("log")
            _wide_axis(ax, sub[m].to_numpy(float), sub[m].to_numpy(float), "y")
            lo, hi = sub["energy_evals"].min(), sub["energy_evals"].max()
            if hi / lo < 10:  # keep at least a decade so the log axis has readable major ticks
                ax.set_xlim(10 ** np.floor(np.log10(lo) - 0.01), 10 ** np.ceil(np.log10(hi) + 0.01))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        fig.suptitle(f"{m} vs energy evaluations")
        fig.tight_layout()
        path = fig_dir / f"metric_{m}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def make_all(out: Path, df: pd.DataFrame, fig_dir: Path | None = None) -> list[Path]:
    """Every figure for the results of ``out``; returns the paths written."""
    out = Path(out)
    fig_dir = Path(fig_dir or out / "figures")
    fig_dir.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")
    return (energy_histograms(out, df, fig_dir) + distance_histograms(out, df, fig_dir)
            + gmm_samples(out, df, fig_dir) + metric_vs_evals(df, fig_dir))
