"""FAB's training state (samplers/fab.py): what ``state_dict`` saves and how a fit resumes from it.

A continued fit must draw exactly what one longer fit would have drawn, so the state holds every
piece of the training loop that evolves: the flow and optimiser, the replay buffer, the HMC step
sizes with their dual-averaging adapters, the Metropolis step sizes, the counts and the fit
generator's state. The eval seed (the fixed draws of a behind the se3 flow's marginal
``log_prob``) is kept too, so a restored flow scores samples exactly as the saved one did.

States written before the Metropolis option have no ``rw_steps``: a fit restored from one keeps
the configured initial steps.
"""
from __future__ import annotations

from typing import Any


def saved(fab) -> dict[str, Any]:
    """The state of a fitted ``FAB`` (``FAB.state_dict`` checks that it was fitted)."""
    t = fab._train
    return {"flow_kind": fab.config.flow, "target": fab.target.name, "sigma": fab.sigma,
            "flow": fab.flow.state_dict(), "opt": t["opt"].state_dict(),
            "buffer": tuple(b.cpu() for b in t["buffer"]), "steps": t["steps"],
            "rounds": t["rounds"], "last": t["last"], "generator": t["generator"],
            "adapters": [a.state for a in fab.adapters], "step_sizes": list(fab.step_sizes),
            "rw_steps": [list(s) for s in fab.rw_steps], "dtype": fab.config.dtype,
            "accept": list(fab.accept), "eval_seed": getattr(fab, "_eval_seed", None)}


def check_flow_kind(state: dict[str, Any], flow: str) -> None:
    """A state of one flow (``realnvp``/``se3_aug``) cannot be loaded into the other: their
    parameters and buffers have different shapes, and the error would otherwise surface as an
    obscure mismatch deep in ``load_state_dict``."""
    if state.get("flow_kind") != flow:
        raise ValueError(f"fab.load_state_dict: the state is of flow {state.get('flow_kind')!r}, "
                         f"not {flow!r}")


def restore(fab, state: dict[str, Any], opt, generator):
    """Load ``state`` into ``fab`` (bound to its target), ``opt`` and ``generator``; returns the
    buffer ``(u, log_w, log_q)``, the step and round counts and the last training summaries."""
    if state["target"] != fab.target.name or abs(state["sigma"] - fab.sigma) > 1e-12:
        raise ValueError(f"fab.fit: the loaded state is of target {state['target']!r}, sigma "
                         f"{state['sigma']}; this fit is {fab.target.name!r}, {fab.sigma}")
    fab.flow.load_state_dict(state["flow"])
    opt.load_state_dict(state["opt"])
    for adapter, da in zip(fab.adapters, state["adapters"]):
        adapter.state = da
    fab.step_sizes, fab.accept = list(state["step_sizes"]), list(state["accept"])
    fab.rw_steps = [list(s) for s in state.get("rw_steps", fab.rw_steps)]
    fab._eval_seed = state["eval_seed"]
    # after _bind drew the (overwritten) initial flow: the stream goes on where the saved fit
    # stopped, so the continued fit draws what one longer fit would have drawn
    generator.set_state(state["generator"])
    buffer = tuple(b.to(fab.device, fab.dtype) for b in state["buffer"])
    return buffer, state["steps"], state["rounds"], dict(state["last"])
