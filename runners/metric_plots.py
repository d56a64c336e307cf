"""Metric figures: ``metric_<name>.png``, each metric against the energy evaluations spent.

One panel per target (log x axis): per sampler the mean ± s.e.m. over ok seeds (error bars) with
the seeds as faint dots; the y axis gives the metric's name, units and direction with plain tick
labels. Samplers with equal budgets are nudged apart by ``DODGE`` on the x axis, and a line under
each panel names the samplers run there without a point, with their table mark ("iDEM
(failed)", "MALA (n/a)", "FAB (no ref)"); a target on which the metric is undefined for every
sampler gets no panel, only a note. Pure functions of the results frame.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib
import matplotlib.ticker

from .figure_axes import plain_ticks, save_figure, wide_axis

import matplotlib.pyplot as plt  # noqa: E402  (Agg selected by figure_axes)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import style  # noqa: E402
from .tables import mean_sem, metric_columns  # noqa: E402

DODGE = 1.04  # horizontal factor between neighbouring samplers on the log x axis
NOTE_WIDTH = 48  # characters per line of the "not shown" note (7 pt under a 3.6-inch panel)



def metric_points(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (target, sampler): mean energy evaluations and mean ± s.e.m. of ``metric`` over the ok
    seeds with a finite value (what the metric figure draws). Columns: target, sampler,
    evals, mean, sem, n."""
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    out = []
    for (t, s), g in ok.groupby(["target", "sampler"], sort=False):
        y = pd.to_numeric(g[metric], errors="coerce") if metric in g else pd.Series(dtype=float)
        keep = np.isfinite(y.to_numpy(dtype=float))
        if not keep.any():
            continue
        ev = pd.to_numeric(g["energy_evals"], errors="coerce").to_numpy(dtype=float)[keep]
        mean, sem = mean_sem(y.to_numpy(dtype=float)[keep])
        out.append({"target": t, "sampler": s, "evals": float(np.nanmean(np.clip(ev, 1, None))),
                    "mean": mean, "sem": sem, "n": int(keep.sum())})
    return pd.DataFrame(out, columns=["target", "sampler", "evals", "mean", "sem", "n"])


def not_drawn(df: pd.DataFrame, target: str, metric: str, drawn) -> list[str]:
    """"iDEM (failed)", "MALA (n/a)", … for the samplers run on ``target`` that have no point in
    its ``metric`` panel, with the table mark of their cell (runners/tables.py), so a reader can
    tell a sampler that failed from one the metric does not apply to."""
    from .tables import MARKS, cell_state
    g = df[df["target"] == target]
    out = []
    for s in style.sampler_order(g["sampler"]):
        if s in set(drawn):
            continue
        state, _ = cell_state(g[g["sampler"] == s], metric)
        mark = {"ok": "no finite value"}.get(state, MARKS.get(state, state))
        out.append(f"{style.sampler_pretty(s, df)} ({mark})")
    return out


def metric_figure(df: pd.DataFrame, metric: str):
    """``metric`` against the energy evaluations spent (log axis), one panel per target: per
    sampler the mean over ok seeds with a ±1 s.e.m. error bar (none for one seed) and each seed as
    a faint dot; the y label gives the metric's name, units and direction; one legend, outside
    the panels. Returns the figure."""
    from .tables import cell_state
    pts = metric_points(df, metric)
    ok = df[(df["status"] == "ok")] if "status" in df.columns else df
    every = list(dict.fromkeys(df["target"]))
    # Targets on which the metric is undefined for every sampler get no panel, only a note.
    undefined = [t for t in every
                 if all(cell_state(g, metric)[0] == "na"
                        for _, g in df[df["target"] == t].groupby("sampler", sort=False))]
    tlist = [t for t in every if t not in undefined] or every
    undefined = [t for t in undefined if t not in tlist]
    fig, axes = plt.subplots(1, len(tlist), figsize=(3.6 * len(tlist), 3.4), squeeze=False)
    handles: dict[str, object] = {}
    for ax, t in zip(axes[0], tlist):
        ax.set_title(style.target_pretty(t, df))
        sub = pts[pts["target"] == t]
        if sub.empty:
            why = "\n".join(["nothing to show:"] + not_drawn(df, t, metric, []))
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="0.4",
                    fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        drawn = style.sampler_order(sub["sampler"])
        for k, s in enumerate(drawn):
            r = sub[sub["sampler"] == s].iloc[0]
            c = style.sampler_color(s)
            # Samplers with the same budget share an x: nudge each by a few per cent on the log
            # axis so markers and error bars sit side by side instead of on top of each other.
            nudge = DODGE ** (k - (len(drawn) - 1) / 2)
            seeds = ok[(ok["target"] == t) & (ok["sampler"] == s)]
            ys = pd.to_numeric(seeds[metric], errors="coerce")
            xs = pd.to_numeric(seeds["energy_evals"], errors="coerce").clip(lower=1) * nudge
            fin = np.isfinite(ys.to_numpy(dtype=float))
            if r["n"] > 1:
                ax.scatter(xs[fin], ys[fin], s=10, color=c, alpha=0.35, linewidths=0, zorder=2)
            sem = r["sem"] if np.isfinite(r["sem"]) else 0.0
            cont = ax.errorbar([r["evals"] * nudge], [r["mean"]], yerr=[[sem], [sem]], fmt="o",
                               ms=6, color=c, ecolor=c, elinewidth=1.4, capsize=3, zorder=3,
                               label=style.sampler_pretty(s, df))
            handles.setdefault(style.sampler_pretty(s, df), cont)
        missing = not_drawn(df, t, metric, drawn)
        if missing:
            # wrapped to the panel's width by hand: matplotlib's wrap=True lets tight_layout
            # see the unwrapped line, which squeezed the axes to nothing with 8 samplers listed
            ax.text(0.01, -0.36, textwrap.fill("not shown: " + ", ".join(missing), NOTE_WIDTH),
                    transform=ax.transAxes, fontsize=7, color="0.35", va="top")
        ax.set_xscale("log")
        wide_axis(ax, sub["mean"].to_numpy(float), sub["mean"].to_numpy(float), "y")
        lo, hi = sub["evals"].min(), sub["evals"].max()
        if hi / lo < 10:  # keep at least a decade so the log axis has readable major ticks
            ax.set_xlim(10 ** np.floor(np.log10(lo) - 0.01), 10 ** np.ceil(np.log10(hi) + 0.01))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("energy evaluations (fit + sampling)")
        plain_ticks(ax, "y")
    info = style.metric_info(metric)
    label = textwrap.fill(style.metric_label(metric, direction=False), 34)
    axes[0][0].set_ylabel(f"{label}\n({textwrap.fill(info.direction, 34)})")
    if undefined:
        fig.text(0.01, -0.02, f"{metric} is not applicable on "
                 f"{', '.join(style.target_pretty(t, df) for t in undefined)} (no panel)",
                 fontsize=7, color="0.35", va="top")
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="center left",
                   bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False,
                   title="mean ± s.e.m.\nover ok seeds")
    fig.suptitle(f"{info.display} ({metric}) vs energy evaluations; {info.direction}")
    fig.tight_layout()
    return fig


def metric_vs_evals(df: pd.DataFrame, fig_dir: Path) -> list[Path]:
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    if ok.empty:
        return []
    return [save_figure(metric_figure(df, m), fig_dir / f"metric_{m}.png", dpi=100)
            for m in metric_columns(ok)]
