"""The budget axis of the grid: a ladder of budgets per target (``budgets=``, ``budgets_s=``, or a
profile's ``budget_ladder`` / ``budget_ladder_s``), and what a ladder cell needs to continue from
the rung below it.

A ladder is a sorted list of positive numbers in one unit: energy evaluations (``budgets=``,
``budget_ladder``), wall seconds of ``fit`` (``budgets_s=``, ``budget_ladder_s``) or the
sampler's own steps (``budgets_steps=``, ``budget_ladder_steps``: optimiser steps of a learned
sampler, transitions of MCMC chains; what runners.curve draws). Each rung becomes the cell's
whole budget: an energy rung is ``max_energy_evals`` with no time cap (a seconds safety net would
make a rung's result depend on the machine; the launcher's ``timeout_min`` still guards a stuck
cell), a seconds rung is ``max_seconds`` with no energy cap, the profile's ``max_steps`` kept in
both; a steps rung is ``max_steps`` alone. The command line wins over the profile, for every
target; targets without a ladder run their profile budget as before.

Continuation (docs/budgets.md): the cells of one (target, sampler, seed) ladder are dispatched as
one unit, in increasing budget, by one worker (local claims and SLURM packs never split a ladder),
so the rung below has always finished when a rung starts. A sampler with ``state_dict`` saves its
state after ``fit`` (``state.pt`` in the cell folder, with the spending so far; every rung, so a
ladder extended later continues from its old top); the next rung loads it and fits with only
the difference.
"""
from __future__ import annotations

import math
from typing import Any

UNITS = {"energy_evals": "max_energy_evals", "seconds": "max_seconds", "steps": "max_steps"}
CLI = {"budgets": "energy_evals", "budgets_s": "seconds", "budgets_steps": "steps"}
PROFILE = {"budget_ladder": "energy_evals", "budget_ladder_s": "seconds",
           "budget_ladder_steps": "steps"}
WHAT = {"energy_evals": ("energy evaluations", "[1e5,1e6,1e7]"),
        "seconds": ("wall seconds of fit", "[30,300]"),
        "steps": ("sampler steps (optimiser steps or chain transitions)", "[100,1000]")}
WHOLE = ("energy_evals", "steps")  # units counted in whole numbers
STATE_FILE = "state.pt"


class LadderError(ValueError):
    """A malformed ladder; the message names the field, the value and what is allowed."""


def parse_ladder(value: Any, field: str, unit: str) -> list[float]:
    """``[1e5, 1e6]`` (or one number) -> sorted distinct positive numbers; energy and steps rungs
    must be whole numbers. Raises LadderError naming ``field``."""
    what, example = WHAT[unit]
    msg = (f"{field}: got {value!r}; expected a list of positive numbers of {what}, "
           f"such as {field}={example}")
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in items:
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise LadderError(msg) from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise LadderError(msg)
        if unit in WHOLE:
            if float(v) != int(v):
                raise LadderError(f"{msg} ({what.split(' (')[0]} are whole numbers, got {v!r})")
            v = int(v)
        out.append(v)
    if not out:
        raise LadderError(msg)
    return sorted(set(out))


def resolve(cli: dict, profile: dict, where: str, target_names: list[str], budgets: dict,
            valid_targets: list[str]) -> dict[str, tuple[str, list[dict]]]:
    """target -> (unit, [budget dict per rung]) for the targets that have a ladder.

    ``cli``: {"budgets": value or None, "budgets_s": value or None}; ``profile``: the loaded
    profile (its ``budget_ladder`` / ``budget_ladder_s`` mappings); ``budgets``: the profile's
    single budget per target (its ``max_steps`` is kept)."""
    given = {k: v for k, v in cli.items() if v is not None}
    if len(given) > 1:
        raise LadderError(f"{', '.join(given)}: got {len(given)}; a grid has one budget axis, "
                          f"either energy evaluations (budgets=), wall seconds (budgets_s=) or "
                          f"sampler steps (budgets_steps=)")
    prof = {k: profile.get(k) for k in PROFILE if profile.get(k)}
    for key, mapping in prof.items():
        if not isinstance(mapping, dict):
            raise LadderError(f"profile {where}: {key}: got {mapping!r}; expected a mapping of "
                              f"target names to lists, such as {{dw4: [1e5, 1e6]}}")
        for t in mapping:
            if t not in valid_targets:
                raise LadderError(f"profile {where}: {key}.{t}: unknown target; allowed: "
                                  f"{', '.join(valid_targets)}")
    keys = list(prof)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            both = set(prof[a]) & set(prof[b])
            if both:
                raise LadderError(f"profile {where}: {a} and {b} both set for "
                                  f"{', '.join(sorted(both))}; one unit per target")
    out = {}
    for t in target_names:
        if given:
            field, value = next(iter(given.items()))
            unit = CLI[field]
        else:
            hits = [(k, m[t]) for k, m in prof.items() if t in m]
            if not hits:
                continue
            key, value = hits[0]
            field, unit = f"profile {where}: {key}.{t}", PROFILE[key]
        rungs = parse_ladder(value, field, unit)
        steps = (budgets.get(t) or {}).get("max_steps")
        out[t] = (unit, [rung_budget(unit, r, steps) for r in rungs])
    return out


def rung_budget(unit: str, value: float, profile_steps: int | None = None) -> dict:
    """The whole budget of one rung: its own cap, plus the profile's ``max_steps`` for energy
    and seconds rungs (a steps rung has no other cap: steps are the axis)."""
    return {"max_energy_evals": value if unit == "energy_evals" else None,
            "max_seconds": float(value) if unit == "seconds" else None,
            "max_steps": value if unit == "steps" else profile_steps}


def rung_value(unit: str, budget: dict) -> float:
    return budget[UNITS[unit]]


def label(unit: str, value: float) -> str:
    """A short, file-name-safe rung label for cell keys: ``e1e5``, ``e2.5e6``, ``t30s``,
    ``st400`` (steps)."""
    if unit == "seconds":
        return f"t{value:g}s".replace("+", "")
    if unit == "steps":
        return f"st{int(value)}"
    mant, _, exp = f"{value:.6e}".partition("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"e{mant}e{int(exp)}"


def remaining(budget: dict, spent_energy: int, spent_seconds: float) -> dict:
    """The budget left after ``spent_*`` (energy and time caps reduced; step caps are the
    sampler's own, counted in its state)."""
    b = dict(budget)
    if b.get("max_energy_evals") is not None:
        b["max_energy_evals"] -= spent_energy
    if b.get("max_seconds") is not None:
        b["max_seconds"] -= spent_seconds
    return b


def columns(spec) -> dict:
    """The budget-axis columns before the cell runs (``continuation`` fills in the last three)."""
    b = spec.budget
    return {"budget_unit": spec.budget_unit, "budget_energy_evals": b.get("max_energy_evals"),
            "budget_seconds": b.get("max_seconds"), "budget_steps": b.get("max_steps"),
            "continued_from": "", "ran_fresh": True,
            "continuation": ""}


def continuation(spec, sampler, ckpt: dict | None, source: str) -> dict:
    """``continued_from`` (the rung below, or ""), ``ran_fresh`` and a sentence saying why."""
    if source == "checkpoint" and "continued_from" in ckpt:  # preempted: as the first attempt
        return {k: ckpt[k] for k in ("continued_from", "ran_fresh", "continuation")}
    if source == "previous":
        below = rung_value(spec.budget_unit, spec.previous_budget)
        return {"continued_from": below, "ran_fresh": False,
                "continuation": f"continued from the {below:g} rung's saved state "
                                f"(spent {ckpt['energy_evals']} energy evaluations, "
                                f"{ckpt['fit_seconds']:.3g} s of fit there)"}
    if not spec.previous:
        why = "the first rung of its ladder"
    elif not hasattr(sampler, "load_state_dict"):
        why = f"{spec.sampler} has no state_dict/load_state_dict, so it cannot continue"
    else:
        why = "the rung below left no saved state (it failed or was skipped)"
    return {"continued_from": "", "ran_fresh": True, "continuation": f"fresh: {why}"}
