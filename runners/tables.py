"""Summary tables: mean ± s.e.m. over seeds, sampler × target, for each metric.

Pure functions of the results frame (one row per cell, as written by ``collect``). Only rows with
``status == "ok"`` and a value enter a mean
(+inf is a value: a W metric of a sample with an infinite energy); s.e.m. = sample std (ddof=1) /
sqrt(n), NaN for a single seed (printed without "±").

Every (target, sampler, metric) gets a *state*, printed as a distinct mark:

========  =========  ===========================================================================
state     mark       meaning
========  =========  ===========================================================================
ok        the value  mean ± s.e.m.; "(n=2/3)" when fewer seeds than ran have a value
na        n/a        not applicable: the metric is undefined for this sampler on this target
                     (e.g. NLL without a sampler density, aligned W2 on GMM-40), or the sampler
                     does not support the target (every row ``skipped``)
noref     no ref     ok seeds, but no reference to score them against (``reference_source``
                     "missing")
failed    failed     no ok seed: every seed ended ``error``, ``diverged`` or ``timeout``
error     err        ok seeds with a reference, but the metric raised on each (``metric_errors``)
none      –          no row: the pair was not run
========  =========  ===========================================================================

Rows' ``warnings`` (``; ``-joined texts) become footnotes: each distinct text gets a number
``w1, w2, …`` (in order of first appearance), cells whose rows carry it are marked ``[w1]``, and
the texts are listed under each table that uses them.
"""
from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

import metrics

from . import style

ID_COLS = ("target", "sampler")
MARKS = {"na": "n/a", "noref": "no ref", "failed": "failed", "error": "err", "none": "–"}
MARK_TEXT = {
    "na": "not applicable (metric undefined for this sampler/target, or the sampler does not "
          "support the target)",
    "noref": "no reference: the seeds ran but could not be scored (reference_source missing)",
    "failed": "no ok seed (error, diverged or timeout; see the status table)",
    "error": "the metric raised on every ok seed (see metric_errors in results.csv)",
    "none": "not run",
}
FAILED_STATUSES = ("error", "diverged", "timeout")
SUMMARY_COLS = ["target", "sampler", "metric", "mean", "sem", "n", "n_ok", "n_seeds", "state",
                "profile", "n_eval", "units", "direction"]


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Metric columns present in ``df`` (registered metrics, then density metrics), in order."""
    known = list(dict.fromkeys(list(metrics.names()) + list(metrics.DENSITY_METRICS)
                               + list(metrics.PATH_METRICS) + list(metrics.OPT_IN)))
    return [m for m in known if m in df.columns and pd.to_numeric(df[m], errors="coerce").notna().any()]


@lru_cache(maxsize=None)
def applicable(target: str, sampler: str) -> frozenset | None:
    """Metrics defined for ``sampler`` on ``target`` (``metrics.applicable`` with the sampler's
    declared density or importance weights), or None when either name is not registered."""
    import samplers
    import targets
    try:
        cls = samplers.get(sampler)
        t = targets.get(target)
    except Exception:  # noqa: BLE001 - unknown (plugin) names: decided from the rows instead
        return None
    own_log_z = {"log_z"} if getattr(cls, "gives_log_z", False) else set()
    opt_in = frozenset(metrics.OPT_IN)  # from samples only: every sampler, when a profile asks
    if getattr(cls, "has_log_prob", False):
        return frozenset(metrics.applicable(t, True)) | opt_in
    if getattr(cls, "has_importance_weights", False):  # log Z, path ELBO, path ESS
        return frozenset(metrics.applicable(t, False, path_weights=True)) | opt_in
    return frozenset(metrics.applicable(t, False)) | own_log_z | opt_in


def _col(g: pd.DataFrame, name: str, default="") -> pd.Series:
    return g[name] if name in g.columns else pd.Series([default] * len(g), index=g.index)


def _no_reference(g: pd.DataFrame) -> pd.Series:
    return _col(g, "reference_source").astype(str) == "missing"


def _metric_errors(g: pd.DataFrame) -> str:
    return " ".join(str(v) for v in _col(g, "metric_errors").dropna())


def _profile(g: pd.DataFrame) -> str:
    return ", ".join(dict.fromkeys(str(p) for p in _col(g, "profile").dropna() if str(p)))


def _n_eval(g: pd.DataFrame) -> str:
    """Samples scored per seed ("1000"; several values "; "-joined; "" when unrecorded)."""
    vals = [str(int(v)) for v in pd.to_numeric(_col(g, "n_eval"), errors="coerce").dropna()]
    return "; ".join(dict.fromkeys(vals))


def cell_state(g: pd.DataFrame, metric: str) -> tuple[str, np.ndarray]:
    """(state, values) of one (target, sampler) group for ``metric``; values are the ok, scored
    seeds' values without NaN (see the module docstring)."""
    if g.empty:
        return "none", np.array([])
    status = _col(g, "status", "ok").astype(str)
    run = g[status != "skipped"]
    if run.empty:
        return "na", np.array([])
    t, s = str(g["target"].iloc[0]), str(g["sampler"].iloc[0])
    app = applicable(t, s)
    col = pd.to_numeric(_col(run, metric, math.nan), errors="coerce")
    ok = (_col(run, "status", "ok").astype(str) == "ok")
    if app is not None and metric not in app:
        return "na", np.array([])
    if not ok.any():
        return "failed", np.array([])
    v = col[ok].to_numpy(dtype=float)
    v = v[~np.isnan(v)]
    if len(v):  # a value needs no reference (log Z, ELBO, ESS are computed without one)
        return "ok", v
    scored = ok & ~_no_reference(run)
    if not scored.any():
        return "noref", v
    if app is None and metric not in _metric_errors(run[scored]):
        return "na", v  # unknown sampler/target, never computed and never failed: undefined
    return "error", v


def mean_sem(v: np.ndarray) -> tuple[float, float]:
    n = len(v)
    if n == 0:
        return math.nan, math.nan
    if not np.isfinite(v).all():
        return float(np.mean(v)), math.nan  # +inf (or nan for +inf and -inf together)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan


def summarize(df: pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """Long frame, one row per (target, sampler, metric): mean, sem, n (seeds with a value),
    n_ok (ok seeds), n_seeds (seeds run, skipped ones excluded), state, profile, units,
    direction."""
    columns = metric_columns(df) if columns is None else columns
    out = []
    if df.empty:
        return pd.DataFrame(columns=SUMMARY_COLS)
    for (t, s), g in df.groupby(list(ID_COLS), sort=False):
        status = _col(g, "status", "ok").astype(str)
        n_seeds = int((status != "skipped").sum())
        n_ok = int((status == "ok").sum())
        for m in columns:
            state, v = cell_state(g, m)
            mean, sem = mean_sem(v)
            info = style.metric_info(m)
            out.append({"target": t, "sampler": s, "metric": m, "mean": mean, "sem": sem,
                        "n": len(v), "n_ok": n_ok, "n_seeds": n_seeds, "state": state,
                        "profile": _profile(g), "n_eval": _n_eval(g), "units": info.units,
                        "direction": info.direction})
    return pd.DataFrame(out, columns=SUMMARY_COLS)


def fmt(mean: float, sem: float, latex: bool = False) -> str:
    """"1.234 ± 0.012" (4 significant digits for the mean, 2 for the s.e.m.); "–" when missing."""
    if math.isnan(mean):
        return "–" if not latex else "--"
    if math.isinf(mean):
        return ("+" if mean > 0 else "-") + (r"$\infty$" if latex else "∞")
    s = f"{mean:.4g}"
    if math.isfinite(sem):
        s += (r" $\pm$ " if latex else " ± ") + f"{sem:.2g}"
    return s


# ---- warnings --------------------------------------------------------------------------------
def _split_warnings(v) -> list[str]:
    """Texts of one row's ``warnings``: a ``"; "``-joined string (a list, or a list stored as
    JSON by ``collect.load_results``, is accepted too); NaN/None/"" -> []."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return []
    if isinstance(v, str) and v.startswith("["):
        try:
            v = json.loads(v)
        except ValueError:
            pass
    if isinstance(v, (list, tuple)):
        return [str(w).strip() for w in v if str(w).strip()]
    return [w.strip() for w in str(v).split("; ") if w.strip() and w.strip().lower() != "nan"]


def warning_index(df: pd.DataFrame) -> dict[str, int]:
    """Distinct warning texts -> footnote number (1, 2, … in order of first appearance)."""
    idx: dict[str, int] = {}
    for v in _col(df, "warnings", None):
        for w in _split_warnings(v):
            idx.setdefault(w, len(idx) + 1)
    return idx


def cell_warnings(df: pd.DataFrame, target: str, sampler: str,
                  index: dict[str, int] | None = None) -> list[int]:
    index = warning_index(df) if index is None else index
    g = df[(df["target"] == target) & (df["sampler"] == sampler)]
    return sorted({index[w] for v in _col(g, "warnings", None) for w in _split_warnings(v)})


def _warning_where(df: pd.DataFrame, text: str) -> str:
    """"LJ-55: DDS s0, FAB s0" for the rows carrying ``text``."""
    parts: dict[str, list[str]] = {}
    for _, r in df.iterrows():
        if text in _split_warnings(r.get("warnings")):
            parts.setdefault(style.target_pretty(r["target"], df), []).append(
                f"{style.sampler_pretty(r['sampler'], df)} s{r.get('seed', '?')}")
    return "; ".join(f"{t}: {', '.join(v)}" for t, v in parts.items())


# ---- wide tables -----------------------------------------------------------------------------
def _orders(df: pd.DataFrame, summary: pd.DataFrame | None = None) -> tuple[list, list]:
    src = summary if summary is not None and len(summary) else df
    return list(dict.fromkeys(src["target"])), style.sampler_order(src["sampler"])


def wide(summary: pd.DataFrame, metric: str, latex: bool = False, df: pd.DataFrame | None = None,
         warn_index: dict[str, int] | None = None) -> pd.DataFrame:
    """One metric as a sampler × target table of formatted cells (values or marks, see the module
    docstring). With ``df``, cells whose rows carry warnings get their footnote marks and the
    headers are pretty names."""
    sub = summary[summary["metric"] == metric]
    if sub.empty:
        return pd.DataFrame()
    order_t, order_s = _orders(sub, sub)
    if df is not None and warn_index is None:
        warn_index = warning_index(df)
    table = pd.DataFrame(MARKS["none"] if not latex else "--", index=order_s, columns=order_t)
    for _, r in sub.iterrows():
        if r["state"] == "ok":
            text = fmt(r["mean"], r["sem"], latex)
            if r["n"] < r["n_seeds"]:
                text += f" (n={int(r['n'])}/{int(r['n_seeds'])})"
        else:
            text = MARKS[r["state"]]
        if df is not None and r["state"] != "na":
            w = cell_warnings(df, r["target"], r["sampler"], warn_index)
            if w:
                tag = ",".join(f"w{i}" for i in w)
                text += rf"\textsuperscript{{{tag}}}" if latex else f" [{tag}]"
        table.loc[r["sampler"], r["target"]] = text
    if df is not None:
        table.index = [style.sampler_pretty(s, df) for s in table.index]
        table.columns = [style.target_pretty(t, df) for t in table.columns]
    table.index.name = "sampler"
    return table


def status_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per target × sampler: cells by status, e.g. "3 ok" or "2 ok, 1 diverged"."""
    rows = []
    for (t, s), g in df.groupby(list(ID_COLS), sort=False):
        counts = g["status"].value_counts()
        rows.append({"target": t, "sampler": s,
                     "text": ", ".join(f"{n} {k}" for k, n in counts.items())})
    if not rows:
        return pd.DataFrame()
    r = pd.DataFrame(rows)
    order_t, order_s = _orders(r)
    return r.pivot(index="sampler", columns="target", values="text").reindex(
        index=order_s, columns=order_t).fillna("–")


def seeds_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per target × sampler: "ok seeds / seeds run" ("skipped" when every seed was skipped)."""
    rows = []
    for (t, s), g in df.groupby(list(ID_COLS), sort=False):
        status = _col(g, "status", "ok").astype(str)
        run = int((status != "skipped").sum())
        text = f"{int((status == 'ok').sum())}/{run}" if run else "skipped"
        rows.append({"target": t, "sampler": s, "text": text})
    r = pd.DataFrame(rows)
    order_t, order_s = _orders(r)
    table = r.pivot(index="sampler", columns="target", values="text").reindex(
        index=order_s, columns=order_t).fillna("–")
    table.index = [style.sampler_pretty(s, df) for s in table.index]
    table.columns = [style.target_pretty(t, df) for t in table.columns]
    table.index.name = "sampler"
    return table


def _num(g: pd.DataFrame, col: str) -> np.ndarray:
    v = pd.to_numeric(_col(g, col, math.nan), errors="coerce").to_numpy(dtype=float)
    return v[np.isfinite(v)]


def health_table(df: pd.DataFrame) -> pd.DataFrame:
    """One line per (target, sampler): seeds, statuses, energy evaluations, budget binding,
    MCMC acceptance (mean over seeds of the chains' mean; min over seeds and chains) and warning
    footnotes. Columns the rows do not carry are left out."""
    windex = warning_index(df)
    has_bind = "budget_binding" in df.columns
    has_acc = any(len(_num(df, c)) for c in ("acceptance_mean", "acceptance_min"))
    out = []
    order_t, order_s = _orders(df)
    for t in order_t:
        for s in order_s:
            g = df[(df["target"] == t) & (df["sampler"] == s)]
            if g.empty:
                continue
            status = _col(g, "status", "ok").astype(str)
            run = int((status != "skipped").sum())
            r = {"target": style.target_pretty(t, df), "sampler": style.sampler_pretty(s, df),
                 "ok seeds": f"{int((status == 'ok').sum())}/{run}" if run else "skipped",
                 "statuses": ", ".join(f"{n} {k}" for k, n in status.value_counts().items())}
            ev = _num(g, "energy_evals")
            r["energy evals (mean)"] = f"{ev.mean():,.0f}" if len(ev) else "–"
            if has_bind:
                b = [str(x) for x in _col(g, "budget_binding").dropna()
                     if str(x) not in ("", "nan")]
                r["budget binding"] = ", ".join(dict.fromkeys(b)) or "–"
            if has_acc:
                am, an = _num(g, "acceptance_mean"), _num(g, "acceptance_min")
                r["acceptance mean"] = f"{am.mean():.3g}" if len(am) else "n/a"
                r["acceptance min"] = f"{an.min():.3g}" if len(an) else "n/a"
            w = cell_warnings(df, t, s, windex)
            r["warnings"] = ", ".join(f"w{i}" for i in w) or "–"
            out.append(r)
    return pd.DataFrame(out)


# ---- Markdown --------------------------------------------------------------------------------
def _md(table: pd.DataFrame, index: bool = True) -> str:
    cols = ([table.index.name or ""] if index else []) + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in table.iterrows():
        cells = ([str(idx)] if index else []) + [str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _unique(df: pd.DataFrame, col: str) -> list[str]:
    vals = []
    for v in _col(df, col, None).dropna():
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        vals.append(str(v))
    return list(dict.fromkeys(v for v in vals if v not in ("", "nan")))


def provenance(df: pd.DataFrame) -> dict[str, str]:
    """profile, n_eval, metric spec version, code version: the distinct values, "; "-joined."""
    return {k: ", ".join(_unique(df, c)) or "unknown"
            for k, c in [("profile", "profile"), ("n_eval", "n_eval"),
                         ("metric spec", "metric_spec_version"), ("code", "code_version")]}


def caption(df: pd.DataFrame) -> str:
    p = provenance(df)
    return (f"Mean ± s.e.m. over ok seeds (s.e.m. = std (ddof=1) / sqrt(n); one seed: the value "
            f"alone). Each seed's n_eval = {p['n_eval']} samples are scored against the first "
            f"n_eval points of the reference test split (the same points for every sampler and "
            f"seed; log Z, ELBO and ESS use only the samples' weights). Profile: "
            f"{p['profile']}; metric spec v{p['metric spec']}; code "
            f"{p['code']}.")


def smoke(df: pd.DataFrame) -> bool:
    return any(style.is_smoke(p) for p in _unique(df, "profile"))


def marks_line(table: pd.DataFrame, latex: bool = False) -> str:
    """"Marks: n/a = not applicable …; failed = …" for the marks present in ``table``."""
    cells = [str(v) for v in table.to_numpy().ravel()]
    present = [k for k, mark in MARKS.items()
               if any(c == mark or c.startswith(mark + " ") or c.startswith(mark + "\\")
                      for c in cells)
               or (latex and k == "none" and any(c.startswith("--") for c in cells))]
    parts = [f"{MARKS[k] if not latex else (MARKS[k] if k != 'none' else '--')} = {MARK_TEXT[k]}"
             for k in present]
    if any("(n=" in c for c in cells):
        parts.append("(n=k/m) = k of the m seeds run have a value")
    return ("Marks: " + "; ".join(parts) + ".") if parts else ""


def _used_warnings(table: pd.DataFrame, windex: dict[str, int]) -> list[tuple[int, str]]:
    cells = " ".join(str(v) for v in table.to_numpy().ravel())
    used = {int(i) for tags in re.findall(r"w(\d+(?:,w\d+)*)", cells)
            for i in tags.replace("w", "").split(",")}
    return [(i, w) for w, i in windex.items() if i in used]


def to_markdown(df: pd.DataFrame, summary: pd.DataFrame | None = None) -> str:
    """summary.md: caption and provenance, seeds, health, one table per metric (marks and
    warning footnotes under each), cell statuses."""
    summary = summarize(df) if summary is None else summary
    windex = warning_index(df)
    parts = ["# Results: mean ± s.e.m. over ok seeds", ""]
    if smoke(df):
        parts += [f"> **{style.SMOKE_CAVEAT}**", ""]
    parts += [caption(df), ""]
    parts += ["## Seeds (ok / run)", "", _md(seeds_table(df)), ""]
    health = health_table(df)
    if not health.empty:
        parts += ["## Health", "", "Acceptance: MCMC samplers only (n/a for the others). "
                  "Budget binding: which Budget field stopped fit.", "",
                  _md(health, index=False), ""]
        used = [(windex[w], w) for w in windex]
        parts += [f"- w{i}: {w} ({_warning_where(df, w)})" for i, w in used]
        parts += [""] if used else []
    for m in dict.fromkeys(summary["metric"]):
        t = wide(summary, m, df=df, warn_index=windex)
        info = style.metric_info(m)
        units = info.units or "dimensionless"
        parts += [f"## {m}: {info.display}", "", f"Units: {units}; {info.direction}.", "",
                  _md(t), ""]
        line = marks_line(t)
        parts += [line] if line else []
        parts += [f"- w{i}: {w}" for i, w in _used_warnings(t, windex)]
        parts += [""] + floor_lines(m, list(dict.fromkeys(summary["target"])))
    st = status_table(df)
    if not st.empty:
        st.index = [style.sampler_pretty(s, df) for s in st.index]
        st.columns = [style.target_pretty(c, df) for c in st.columns]
        st.index.name = "sampler"
        parts += ["## Cell status", "", _md(st), ""]
    return "\n".join(parts)


FLOORS = Path(__file__).resolve().parents[1] / "results" / "measured" / "nll_cnf_floors.csv"


def floor_lines(metric: str, target_names: list[str], path: Path = FLOORS) -> list[str]:
    """Under the nll_cnf table: the measured floors of ``target_names`` (the reference's own
    nll_cnf, and GMM-40's exact NLL) from results/measured/nll_cnf_floors.csv, with their
    settings; nothing for other metrics or when the file is absent."""
    if metric != "nll_cnf" or not path.is_file():
        return []
    fl = pd.read_csv(path, keep_default_na=False)
    fl = fl[fl["target"].isin(target_names)]
    if fl.empty:
        return []
    out = ["Floors (results/measured/nll_cnf_floors.csv, docs/metrics.md), at the settings "
           "given: compare only with rows whose CNF was trained the same way.", ""]
    for _, r in fl.iterrows():
        out.append(f"- {style.target_pretty(r['target'])}: {r['quantity']} = {r['value']:.3f} "
                   f"nats ({r['settings']})")
    return out + [""]


# ---- LaTeX -----------------------------------------------------------------------------------
_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "²": r"$^2$", "√": r"$\sqrt{}$", "∞": r"$\infty$", "–": "--"}


def tex_escape(s) -> str:
    return "".join(_TEX.get(c, c) for c in str(s))


def to_latex(df: pd.DataFrame, summary: pd.DataFrame | None = None) -> str:
    """summary.tex: complete ``table`` environments (booktabs rules, so the document needs
    ``\\usepackage{booktabs}``) with pretty names: the seeds (ok / run, label ``tab:seeds``), then
    one per metric with a caption giving units, direction and provenance, a label
    ``tab:<metric>`` and the marks and warnings under the tabular."""
    summary = summarize(df) if summary is None else summary
    windex = warning_index(df)
    cap = caption(df)
    if smoke(df):
        cap = style.SMOKE_CAVEAT[0].upper() + style.SMOKE_CAVEAT[1:] + ". " + cap
    out = ["% boltzbench summary tables; needs \\usepackage{booktabs}", ""]
    seeds = seeds_table(df)
    out += _tex_table(f"Seeds per cell: ok seeds / seeds run (skipped seeds not counted). "
                      f"{cap}", "tab:seeds", seeds.map(tex_escape), [])
    for m in dict.fromkeys(summary["metric"]):
        t = wide(summary, m, latex=True, df=df, warn_index=windex)
        info = style.metric_info(m)
        units = f" [{info.units}]" if info.units else ""
        notes = [marks_line(t, latex=True)] + [f"w{i}: {w}" for i, w in _used_warnings(t, windex)]
        out += _tex_table(f"{info.display}{units}, {info.direction}. {cap}",
                          f"tab:{m.replace('_', '-')}", t, [n for n in notes if n])
    return "\n".join(out)


def _tex_table(cap: str, label: str, t: pd.DataFrame, notes: list[str]) -> list[str]:
    """One ``table`` float: caption (escaped here), label, booktabs tabular of the already
    formatted cells of ``t`` (index = sampler), notes under it."""
    out = [r"\begin{table}[htbp]", r"\centering", r"\small",
           rf"\caption{{{tex_escape(cap)}}}", rf"\label{{{label}}}",
           r"\begin{tabular}{l" + "c" * len(t.columns) + "}", r"\toprule",
           " & ".join(["Sampler"] + [tex_escape(c) for c in t.columns]) + r" \\", r"\midrule"]
    out += [" & ".join([tex_escape(i)] + [str(v) for v in r]) + r" \\" for i, r in t.iterrows()]
    out += [r"\bottomrule", r"\end{tabular}"]
    if notes:
        out += [r"\par\smallskip\footnotesize " + r" \\ ".join(tex_escape(n) for n in notes)]
    return out + [r"\end{table}", ""]


def to_csv_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Numeric summary for CSV: target, sampler, metric, mean, sem, n, n_ok, n_seeds, state,
    profile, units, direction."""
    return summary.reset_index(drop=True)
