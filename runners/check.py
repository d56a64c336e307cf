"""Conformance check of a sampler or target against the benchmark's protocol, on tiny budgets.

    python -m runners.check sampler=ula                       # a registered name (entry point)
    python -m runners.check sampler=mypkg.sampler:MySampler   # or module:Class, file.py:Class
    python -m runners.check sampler=ula targets=gmm40,dw4     # default: every registered target
    python -m runners.check target=lj13                       # a target: energies, counters, ...

One line per requirement: ``PASS``/``FAIL``, the requirement, and what was seen. Exit status 0
only when every line passes, 1 when one fails, 2 for bad input. The project's contract tests
(tests/test_sampler_contract.py, tests/test_targets.py) call :func:`check_sampler` and
``runners.check_target.check_target``, so the command and the tests cannot drift apart.

Energy evaluations are counted twice: by the target's own counter (what the runner reports) and by
:class:`IndependentCount`, a wrapper around the target's private ``_energy``/``_energy_and_grad``
that counts configurations itself; a sampler that reaches the energy without being charged (a
private call, a second code path) shows as a difference.

Conventions a sampler may use (see docs/adding-a-sampler.md): ``tiny_config(target)``
(classmethod, a config that fits in about a second), ``budget_slack_evals`` (evaluations ``fit``
may spend beyond the cap), ``supports(target)`` (True or the reason it cannot run).
"""
from __future__ import annotations

import dataclasses
import importlib
import io
import math
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import torch

import samplers
import targets
from samplers import Budget

from . import plugins

BUDGET = Budget(max_energy_evals=3001, max_steps=60)  # 3001: not a multiple of any batch size
N = 64
# The budget runners/cell.py gives a resumed fit whose checkpoint spent everything.
RESUMED_DONE = Budget(max_energy_evals=1, max_seconds=1e-6)


@dataclass(frozen=True)
class Line:
    requirement: str
    ok: bool
    seen: str
    where: str = ""   # the target a sampler was checked on

    def __str__(self) -> str:
        where = f"[{self.where}] " if self.where else ""
        return f"{'PASS' if self.ok else 'FAIL'}  {where}{self.requirement}: {self.seen}"


class Skip(Exception):
    """The sampler declares (``supports``) that it cannot run on this target."""


# ------------------------------------------------------------------------- independent counting
class IndependentCount:
    """Counts the configurations that reach ``target._energy`` / ``_energy_and_grad``, without
    the target's counter: ``n`` energy evaluations and ``grads`` gradient evaluations. The
    outermost call counts (the autograd gradient calls ``_energy`` inside ``_energy_and_grad``;
    that is one evaluation, not two). A gradient autograd takes through ``_energy``'s output
    counts when the backward pass reaches it."""

    def __init__(self, target):
        self.n = 0
        self.grads = 0
        self._depth = 0
        for attr in ("_energy", "_energy_and_grad"):
            setattr(target, attr, self._wrap(getattr(target, attr), attr == "_energy_and_grad"))

    def _grad_hook(self, n: int):
        def hook(grad):
            self.grads += n
        return hook

    def _wrap(self, fn, gives_grad: bool):
        def counted(x, *args, **kwargs):
            outer = self._depth == 0
            n = int(x[..., 0].numel())
            if outer:
                self.n += n
                self.grads += n if gives_grad else 0
            self._depth += 1
            try:
                out = fn(x, *args, **kwargs)
            finally:
                self._depth -= 1
            if outer and not gives_grad and out.requires_grad:
                out.register_hook(self._grad_hook(n))
            return out
        return counted


# ------------------------------------------------------------------------- sampler checks
def _config(cls, target):
    tiny = getattr(cls, "tiny_config", None)
    return tiny(target) if callable(tiny) else cls.Config()


def _run(cls, target_name: str, seed: int, global_seed: int, budget: Budget, n: int):
    """One fit and sample on a fresh target; the global RNG is reseeded first (and restored)."""
    state = torch.get_rng_state()
    torch.manual_seed(global_seed)
    try:
        target = targets.get(target_name)
        count = IndependentCount(target)
        sampler = cls(_config(cls, target))
        info = sampler.fit(target, budget, torch.Generator().manual_seed(seed))
        fit = (target.counter.energy_evals, count.n, target.counter.grad_evals, count.grads)
        x = sampler.sample(n, torch.Generator().manual_seed(seed + 1))
        sample = (target.counter.energy_evals - fit[0], count.n - fit[1],
                  target.counter.grad_evals - fit[2], count.grads - fit[3])
    finally:
        torch.set_rng_state(state)
    return sampler, target, info, fit, sample, x


def _class_lines(cls) -> list[Line]:
    out = []
    missing = [a for a in ("name", "pretty_name", "has_log_prob", "Config") if not hasattr(cls, a)]
    out.append(Line("class attributes name, pretty_name, has_log_prob, Config", not missing,
                    f"missing {missing}" if missing else "all present"))
    cfg = getattr(cls, "Config", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        out.append(Line("Config is a dataclass", False, f"got {cfg!r}"))
        return out
    hints = typing.get_type_hints(cfg)
    untyped = [f.name for f in dataclasses.fields(cfg)
               if hints.get(f.name, typing.Any) is typing.Any]
    out.append(Line("Config fields typed", not untyped,
                    f"untyped: {untyped}" if untyped else f"{len(hints)} typed fields"))
    try:
        verdict = cfg().validate() if hasattr(cfg, "validate") else "no validate() method"
    except Exception as exc:  # noqa: BLE001 - reported as the line's finding
        verdict = f"defaults rejected: {type(exc).__name__}: {exc}"
    out.append(Line("Config.validate() exists and accepts the defaults", verdict is None,
                    "ok" if verdict is None else str(verdict)))
    return out


def _sample_lines(sampler, target, x, n: int) -> list[Line]:
    out = []
    ok = isinstance(x, torch.Tensor) and tuple(x.shape) == (n, target.dim)
    out.append(Line(f"sample({n}) shape [{n}, {target.dim}]", ok,
                    f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"))
    if not ok:
        return out
    out.append(Line("float32 on cpu", x.dtype == torch.float32 and x.device.type == "cpu",
                    f"{x.dtype} on {x.device}"))
    finite = bool(torch.isfinite(x).all())
    out.append(Line("samples finite", finite, f"{int((~torch.isfinite(x)).sum())} non-finite"))
    spread = x.double().std(0) if finite else torch.full((target.dim,), float("nan"))
    distinct = int(torch.unique(x, dim=0).shape[0])
    ok = bool(torch.isfinite(spread).all()) and float(spread.max()) > 1e-6 and distinct > 1
    out.append(Line("samples not degenerate (spread > 0, not all equal)", ok,
                    f"max per-coordinate std {float(spread.max()):.3g}, {distinct} distinct rows"))
    if target.n_particles is not None:
        drift = float(target.particles(x).mean(-2).abs().max())
        out.append(Line("particle samples mean-free (|mean| < 1e-4)", drift < 1e-4,
                        f"max |particle mean| {drift:.2e}"))
    one = sampler.sample(1, torch.Generator().manual_seed(0))
    out.append(Line(f"sample(1) shape [1, {target.dim}]", tuple(one.shape) == (1, target.dim),
                    f"{tuple(one.shape)}"))
    return out


def _round_trip_line(cls, sampler, target_name: str, x: torch.Tensor, n: int) -> Line:
    """``state_dict`` saved to bytes and loaded into a *fresh* instance on a fresh target, resumed
    as runners/cell.py resumes a finished checkpoint (``fit`` with a budget spent at once): it
    must sample what the original sampled with the same generator."""
    buf = io.BytesIO()
    torch.save(sampler.state_dict(), buf)
    buf.seek(0)
    target = targets.get(target_name)
    fresh = cls(_config(cls, target))
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    fresh.fit(target, RESUMED_DONE, torch.Generator().manual_seed(0))
    again = fresh.sample(n, torch.Generator().manual_seed(12))
    ok = isinstance(again, torch.Tensor) and again.shape == x.shape and torch.equal(again, x)
    return Line("state_dict round trip: a fresh instance samples as the original", ok,
                "identical samples" if ok else "samples differ after loading into a new instance")


def _subspace_coordinates(x: torch.Tensor, target) -> torch.Tensor:
    """Coordinates of ``x`` in an orthonormal basis of the mean-free subspace (particles; the
    densities of particle samplers live there, unit Jacobian), else ``x`` itself. The basis is
    the QR of the centring matrix, independent of any sampler's own basis."""
    if target.n_particles is None:
        return x
    n_p, d = target.n_particles, target.spatial_dim
    centring = torch.eye(n_p, dtype=torch.float64) - 1.0 / n_p
    q, _ = torch.linalg.qr(centring[:, : n_p - 1])
    return torch.einsum("bpd,pk->bkd", x.reshape(-1, n_p, d), q).reshape(x.shape[0], -1)


def _log_prob_line(sampler, target, m: int = 4096) -> Line:
    """``log_prob`` is the normalised density of what ``sample`` draws: for x ~ q and any
    normalised density r, E_q[r(x)/q(x)] = 1. r is a Gaussian fitted to the samples with a shrunk
    covariance (half in 2-D, 1 - 1/sqrt(d) of it in d dims: narrower than q, so r/q stays bounded
    in q's tails, but close enough that the estimate is usable in 162-D); a log_prob off by
    a constant, on the wrong subspace or for another distribution moves the mean away from 1."""
    # r is fitted on draws of its own: fitted on the evaluated points it would overfit them
    # (measured in 162-D: +3 nats from the ~13,000 covariance parameters).
    fit_z = _subspace_coordinates(sampler.sample(m, torch.Generator().manual_seed(4)).double(),
                                  target)
    x = sampler.sample(m, torch.Generator().manual_seed(5)).double()
    log_q = sampler.log_prob(x.float()).double()
    z = _subspace_coordinates(x, target)
    shrink = max(0.5, 1.0 - z.shape[1] ** -0.5)   # r/q variance stays bounded as dim grows
    cov = shrink * torch.cov(fit_z.T).reshape(z.shape[1], z.shape[1]) \
        + 1e-6 * torch.eye(z.shape[1], dtype=torch.float64)
    log_r = torch.distributions.MultivariateNormal(fit_z.mean(0), cov).log_prob(z)
    log_ratio = log_r - log_q
    w = torch.exp(log_ratio - log_ratio.max())
    log_mean = float(torch.log(w.mean()) + log_ratio.max())
    se = float(w.std() / w.mean()) / math.sqrt(m)   # delta method: sd of log of the mean
    ok = math.isfinite(log_mean) and abs(log_mean) <= 4 * se + 0.05
    return Line(f"log_prob normalised and consistent with sample() (log E_q[r/q] = 0, {m} draws)",
                ok, f"log E_q[r/q] = {log_mean:+.3f} +- {se:.3f}")


def check_sampler(cls, target_name: str, budget: Budget = BUDGET, n: int = N) -> list[Line]:
    """Every requirement for sampler class ``cls`` on target ``target_name``; raises
    :class:`Skip` where the sampler's ``supports`` declines the target."""
    out = _class_lines(cls)
    if not all(line.ok for line in out):
        return out
    supports = getattr(cls, "supports", None)
    verdict = supports(targets.get(target_name)) if callable(supports) else True
    if verdict is not True:
        raise Skip(str(verdict) or "not supported")
    sampler, target, info, fit, spent, x = _run(cls, target_name, 11, 1, budget, n)

    ok = isinstance(info, dict) and info.get("budget_binding") in samplers.BINDINGS
    out.append(Line("fit returns info['budget_binding'] in " + "/".join(samplers.BINDINGS), ok,
                    repr(info.get("budget_binding") if isinstance(info, dict) else info)))
    w = info.get("warnings") if isinstance(info, dict) else None
    out.append(Line("fit returns info['warnings'] as a list of str",
                    isinstance(w, list) and all(isinstance(s, str) for s in w), repr(w)[:120]))
    out.append(Line("every fit energy evaluation counted (target counter == independent count)",
                    fit[0] == fit[1], f"counter {fit[0]}, independent {fit[1]}"))
    out.append(Line("every sample() energy evaluation counted", spent[0] == spent[1],
                    f"counter {spent[0]}, independent {spent[1]}"))
    out.append(Line("every gradient evaluation counted (fit and sample())",
                    (fit[2], spent[2]) == (fit[3], spent[3]),
                    f"counter {fit[2]} + {spent[2]}, independent {fit[3]} + {spent[3]}"))
    if isinstance(info, dict) and "energy_evals" in info:
        out.append(Line("info['energy_evals'] equals the independent count",
                        info["energy_evals"] == fit[1],
                        f"info {info['energy_evals']}, independent {fit[1]}"))
    slack = int(getattr(cls, "budget_slack_evals", 0))
    cap = budget.max_energy_evals
    if cap is not None:
        out.append(Line(f"budget respected (fit <= max_energy_evals={cap} + slack {slack})",
                        fit[1] <= cap + slack, f"{fit[1]} evaluations"))
    out += _sample_lines(sampler, target, x, n)
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != (n, target.dim):
        return out

    if cls.has_log_prob:
        lp = sampler.log_prob(x)
        out.append(Line(f"log_prob(samples) shape [{n}], finite",
                        tuple(lp.shape) == (n,) and bool(torch.isfinite(lp).all()),
                        f"{tuple(lp.shape)}, {int((~torch.isfinite(lp)).sum())} non-finite"))
        out.append(_log_prob_line(sampler, target))
    if getattr(cls, "has_importance_weights", False):
        xw, log_w = sampler.log_weights(n, torch.Generator().manual_seed(3))
        ok = tuple(xw.shape) == (n, target.dim) and tuple(log_w.shape) == (n,) \
            and not bool(torch.isnan(log_w).any())
        out.append(Line("log_weights(n): x [n, dim], log_w [n] without NaN", ok,
                        f"{tuple(xw.shape)}, {tuple(log_w.shape)}"))
    if hasattr(sampler, "state_dict") and hasattr(sampler, "load_state_dict"):
        out.append(_round_trip_line(cls, sampler, target_name, x, n))

    # Same generator seeds, different global seed: identical output means no global RNG and
    # determinism together; only a difference needs a third run to say which failed.
    _, _, _, fit2, _, x2 = _run(cls, target_name, 11, 2, budget, n)
    same = torch.equal(x, x2) and fit2 == fit
    if same:
        out.append(Line("deterministic under a fixed generator", True, "identical samples"))
        out.append(Line("no global RNG (torch.manual_seed changes nothing)", True,
                        "identical samples"))
    else:
        _, _, _, fit3, _, x3 = _run(cls, target_name, 11, 1, budget, n)
        det = torch.equal(x, x3) and fit3 == fit
        out.append(Line("deterministic under a fixed generator", det,
                        "identical samples" if det else "two runs with the same seeds differ"))
        out.append(Line("no global RNG (torch.manual_seed changes nothing)", not det or same,
                        "samples change with torch.manual_seed" if det else "undecided"))
    return [dataclasses.replace(line, where=target_name) for line in out]


# ------------------------------------------------------------------------- command line
def resolve_sampler(spec: str):
    """A registered name, ``module:Class`` or ``path/file.py:Class``."""
    if ":" not in spec:
        return samplers.get(spec)
    mod, _, attr = spec.rpartition(":")
    if mod.endswith(".py"):
        plugins.load((mod,))
        module = sys.modules[Path(mod).stem]
    else:
        module = importlib.import_module(mod)
    if not hasattr(module, attr):
        raise KeyError(f"sampler: module {mod!r} has no attribute {attr!r}")
    return getattr(module, attr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    bad = [a for a in argv if "=" not in a] + [k for k in opts if k not in
                                                 ("sampler", "target", "targets", "plugins")]
    if bad or ("sampler" in opts) == ("target" in opts):
        print(__doc__.split("\n\n")[1] if any(a in ("-h", "--help") for a in argv) else
              f"error: expected sampler=<name|module:Class> or target=<name> (one of them), "
              f"optionally targets=a,b and plugins=mod,file.py; got {argv}", file=sys.stderr)
        return 0 if any(a in ("-h", "--help") for a in argv) else 2
    try:
        plugins.load(plugins.requested(opts.get("plugins")))
        for f in plugins.FAILURES:
            print(f"warning: {f.message()}", file=sys.stderr)
        if "target" in opts:
            from .check_target import check_target  # imports this module (Line)
            lines = check_target(opts["target"])
        else:
            cls = resolve_sampler(opts["sampler"])
            names = opts.get("targets", ",".join(targets.names())).split(",")
            for t in names:
                targets.get(t)  # an unknown name errors before any fit
            lines = []
            for t in names:
                try:
                    lines += check_sampler(cls, t)
                except Skip as why:
                    print(f"SKIP  [{t}] {why}")
    except (KeyError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    failed = sum(not line.ok for line in lines)
    print(f"{len(lines) - failed} passed, {failed} failed")
    return 1 if failed or not lines else 0


if __name__ == "__main__":
    sys.exit(main())
