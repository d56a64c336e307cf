"""The budget axis of the grid: a ladder of budgets per target (``budgets=``, ``budgets_s=``, or a
profile's ``budget_ladder`` / ``budget_ladder_s``), and what a ladder cell needs to continue from
the rung below it.

A ladder is a sorted list of positive numbers in one unit: energy evaluations (``budgets=``,
``budget_ladder``) or wall seconds of ``fit`` (``budgets_s=``, ``budget_ladder_s``). Each rung
becomes the cell's whole budget: an energy rung is ``max_energy_evals`` with no time cap (a
seconds safety net would make a rung's result depend on the machine; the launcher's
``timeout_min`` still guards a stuck cell), a seconds rung is ``max_seconds`` with no energy cap;
the profile's ``max_steps`` is kept in both. The command line wins over the profile, for every
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

UNITS = {"energy_evals": "max_energy_evals", "seconds": "max_seconds"}
CLI = {"budgets": "energy_evals", "budgets_s": "seconds"}
PROFILE = {"budget_ladder": "energy_evals", "budget_ladder_s": "seconds"}
STATE_FILE = "state.pt"


class LadderError(ValueError):
    """A malformed ladder; the message names the field, the value and what is allowed."""


def parse_ladder(value: Any, field: str, unit: str) -> list[float]:
    """``[1e5, 1e6]`` (or one number) -> sorted distinct positive numbers; energy rungs must be
    whole numbers. Raises LadderError naming ``field``."""
    what = "energy evaluations" if unit == "energy_evals" else "wall seconds of fit"
    example = "[1e5,1e6,1e7]" if unit == "energy_evals" else "[30,300]"
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
        if unit == "energy_evals":
            if float(v) != int(v):
                raise LadderError(f"{msg} (energy evaluations are whole numbers, got {v!r})")
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
        raise LadderError("budgets, budgets_s: got both; a grid has one budget axis, either energy "
                          "evaluations (budgets=) or wall seconds (budgets_s=)")
    prof = {k: profile.get(k) for k in PROFILE if profile.get(k)}
    for key, mapping in prof.items():
        if not isinstance(mapping, dict):
            raise LadderError(f"profile {where}: {key}: got {mapping!r}; expected a mapping of "
                              f"target names to lists, such as {{dw4: [1e5, 1e6]}}")
        for t in mapping:
            if t not in valid_targets:
                raise LadderError(f"profile {where}: {key}.{t}: unknown target; allowed: "
                                  f"{', '.join(valid_targets)}")
    if len(prof) > 1:
        both = set(prof["budget_ladder"]) & set(prof["budget_ladder_s"])
        if both:
            raise LadderError(f"profile {where}: budget_ladder and budget_ladder_s both set for "
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
        out[t] = (unit, [{"max_energy_evals": r if unit == "energy_evals" else None,
                          "max_seconds": float(r) if unit == "seconds" else None,
                          "max_steps": steps} for r in rungs])
    return out


def rung_value(unit: str, budget: dict) -> float:
    return budget[UNITS[unit]]


def label(unit: str, value: float) -> str:
    """A short, file-name-safe rung label for cell keys: ``e1e5``, ``e2.5e6``, ``t30s``."""
    if unit == "seconds":
        return f"t{value:g}s".replace("+", "")
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
            "budget_seconds": b.get("max_seconds"), "continued_from": "", "ran_fresh": True,
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
