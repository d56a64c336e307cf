"""The `Sampler` protocol, the compute `Budget`, and the errors samplers raise.

Protocol: ``sampler = samplers.get("mala")(config)``; ``sampler.fit(target, budget, generator)``;
``sampler.sample(n, generator) -> [n, dim]``; ``sampler.log_prob(x)`` where ``has_log_prob``.
Every energy evaluation goes through the target's public methods, which count it.

What ``fit`` returns in its info dict (``runners/cell.py`` copies these into the row):

* ``"budget_binding"``: ``BudgetClock.binding``, the cap that stopped the fit, one of
  ``"energy_evals"``, ``"seconds"``, ``"steps"``, ``"none"`` (the fit ended by itself);
* ``"warnings"``: a list of human-readable strings (empty when all is well), e.g. a budget below
  one step (:func:`below_one_step_warning`) or frozen MCMC chains (:func:`acceptance_warning`);
* MCMC samplers also ``"acceptance_mean"`` and ``"acceptance_min"`` (over chains; NaN when no
  transition ran);
* a sampler that estimates log Z during its fit (SMC) sets the class attribute
  ``gives_log_z = True`` and reports ``"log_z"``, which becomes the row's ``log_z`` column.

Optional instance attribute: ``network_evals`` (int), the configurations the sampler has passed
through its networks so far, one per configuration per forward pass (:func:`count_network_passes`
keeps it for a module); the runner records what ``fit`` and sampling add (``fit_network_evals``,
``sample_network_evals``; docs/budgets.md). Samplers without networks leave it out (the row says 0
for the built-in MCMC samplers, empty for a plugin that does not count).

Optional class attributes: ``has_importance_weights`` (``log_weights(n, generator) -> (x, log_w)``
with path-space weights: the row gets ``log_z``, ``elbo_path``, ``ess_path``) and
``gives_log_z``; both default to False.

Every sampler ``Config`` has ``validate() -> None`` raising ValueError whose message begins with
the field name ("step_size: got -1.0; expected a finite number > 0"), built from the ``check_*``
helpers below; samplers call it (through :func:`validated`) first thing in ``__init__``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch


def count_network_passes(module: torch.nn.Module, owner) -> torch.nn.Module:
    """Charge every forward pass of ``module`` (called directly or through
    ``torch.func.functional_call``) to ``owner.network_evals``: the leading size of its widest
    tensor argument, i.e. one per configuration. Returns ``module``."""
    if not hasattr(owner, "network_evals"):
        owner.network_evals = 0

    def charge(mod, args, output):
        owner.network_evals += max((a.shape[0] for a in args if torch.is_tensor(a) and a.ndim),
                                   default=1)
    module.register_forward_hook(charge)
    return module


class Diverged(RuntimeError):
    """A sampler produced NaN/inf (samples, loss or parameters). Recorded as status ``diverged``."""


@dataclass(frozen=True)
class Budget:
    """Caps on what ``fit`` may spend; ``None`` means no cap. At least one cap must be set.

    ``max_energy_evals`` counts energy evaluations charged to the target (one per configuration),
    ``max_seconds`` wall time of ``fit``, ``max_steps`` the sampler's own notion of a step
    (an MCMC transition, an optimiser step), documented per sampler.
    """

    max_energy_evals: int | None = None
    max_seconds: float | None = None
    max_steps: int | None = None

    def __post_init__(self):
        for field_name in ("max_energy_evals", "max_seconds", "max_steps"):
            v = getattr(self, field_name)
            if v is not None and (not isinstance(v, (int, float)) or v <= 0 or math.isnan(v)):
                raise ValueError(f"Budget.{field_name} must be a positive number or None, got {v!r}")
        if self.max_energy_evals is None and self.max_seconds is None and self.max_steps is None:
            raise ValueError("Budget: set at least one of max_energy_evals, max_seconds, max_steps")

    def start(self, target) -> "BudgetClock":
        return BudgetClock(self, target)


BINDINGS = ("energy_evals", "seconds", "steps", "none")


class BudgetClock:
    """Tracks spending since ``fit`` began; samplers call ``exhausted(step)`` between steps.

    ``allows(evals)`` says whether a further call costing ``evals`` energy evaluations fits, so a
    sampler can stop *before* overshooting the energy cap.

    ``binding`` records which cap stopped the fit: ``"energy_evals"``, ``"seconds"``, ``"steps"``,
    or ``"none"`` (no cap refused anything: the fit ended by itself, e.g. at a ``max_iters``). It is
    set by ``exhausted()`` when it returns True and by ``allows()`` when it returns False; a
    sampler probing the budget for a choice that does not end the fit (e.g. "does the expensive
    start fit?") passes ``record=False``. When several caps are hit at once the deterministic ones
    win (energy, then steps, then seconds), so a seed-fixed run does not report ``seconds``.
    Samplers return it as ``info["budget_binding"]``.
    """

    def __init__(self, budget: Budget, target):
        self.budget = budget
        self.target = target
        self.t0 = time.perf_counter()
        self.e0 = target.counter.energy_evals
        self.binding = "none"

    @property
    def energy_evals(self) -> int:
        return self.target.counter.energy_evals - self.e0

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def allows(self, evals: int, record: bool = True) -> bool:
        b = self.budget
        ok = b.max_energy_evals is None or self.energy_evals + evals <= b.max_energy_evals
        if not ok and record:
            self.binding = "energy_evals"
        return ok

    def exhausted(self, steps_done: int = 0) -> bool:
        b = self.budget
        if b.max_energy_evals is not None and self.energy_evals >= b.max_energy_evals:
            self.binding = "energy_evals"
        elif b.max_steps is not None and steps_done >= b.max_steps:
            self.binding = "steps"
        elif b.max_seconds is not None and self.seconds >= b.max_seconds:
            self.binding = "seconds"
        else:
            return False
        return True

    def out_of_time(self) -> bool:
        """Whether ``max_seconds`` has passed (a pure query: ``binding`` is left to ``exhausted``).
        For long loops inside one step that no energy or step cap can stop, e.g. a generation."""
        b = self.budget
        return b.max_seconds is not None and self.seconds >= b.max_seconds

    def cap(self) -> str:
        """The binding cap as ``field=value`` (e.g. ``max_energy_evals=3000``), for messages."""
        field = {"energy_evals": "max_energy_evals", "seconds": "max_seconds",
                 "steps": "max_steps"}.get(self.binding)
        if field is None:
            return "no cap bound"
        return f"{field}={getattr(self.budget, field):g}"


def below_one_step_warning(clock: BudgetClock, step: str, cost: int | None,
                           consequence: str) -> str:
    """The ``info["warnings"]`` entry of a fit whose budget ran out before one complete ``step``
    (e.g. "training step"); ``cost`` is the energy evaluations one step needs (None: unknown)."""
    what = f"one {step} costs ~{cost} energy evaluations; " if cost is not None else ""
    return (f"budget below one {step}: {consequence} ({what}budget {clock.cap()}, "
            f"{clock.energy_evals} evaluations and {clock.seconds:.3g} s spent before it stopped)")


LOW_ACCEPTANCE = 0.01


def acceptance_warning(acceptance_mean: float) -> str | None:
    """The frozen-chain warning when the mean acceptance is below 1 % (None otherwise, NaN too)."""
    if acceptance_mean is not None and acceptance_mean < LOW_ACCEPTANCE:
        return (f"acceptance {acceptance_mean:.3g} below 1 %: the chains are frozen, samples are "
                f"close to their starts")
    return None


@runtime_checkable
class Sampler(Protocol):
    name: ClassVar[str]
    pretty_name: ClassVar[str]
    has_log_prob: ClassVar[bool]

    def fit(self, target, budget: Budget, generator: torch.Generator) -> dict[str, Any]: ...
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor: ...


def check_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """Raise `Diverged` naming ``what`` if ``x`` holds NaN or inf."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise Diverged(f"{what}: {bad} non-finite values")
    return x


# ----------------------------------------------------------------------------- config validation
# Shared by every sampler's ``Config.validate()``. Each raises ValueError whose message begins with
# the field name, then what arrived and what is allowed: "step_size: got -1.0; expected a finite
# number > 0". ``optional=True`` also accepts None (the per-target default).

def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fail(name: str, value, expected: str, optional: bool) -> None:
    tail = " (or None for the default)" if optional else ""
    raise ValueError(f"{name}: got {value!r}; expected {expected}{tail}")


def check_positive(name: str, value, optional: bool = False) -> None:
    """A finite number > 0."""
    if optional and value is None:
        return
    if not _is_number(value) or not math.isfinite(value) or not value > 0:
        _fail(name, value, "a finite number > 0", optional)


def check_nonnegative(name: str, value, optional: bool = False) -> None:
    """A finite number >= 0."""
    if optional and value is None:
        return
    if not _is_number(value) or not math.isfinite(value) or not value >= 0:
        _fail(name, value, "a finite number >= 0", optional)


def check_int(name: str, value, minimum: int = 1, optional: bool = False) -> None:
    """An int >= ``minimum`` (default 1: a positive integer); bools and floats are refused."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(name, value, "a positive integer" if minimum == 1 else f"an integer >= {minimum}",
              optional)


def check_range(name: str, value, low: float, high: float, low_open: bool = True,
                high_open: bool = True, optional: bool = False) -> None:
    """A finite number in the interval (low, high), ``low_open``/``high_open`` choosing the ends."""
    if optional and value is None:
        return
    ok = _is_number(value) and math.isfinite(value)
    if ok:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        ok = above and below
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        _fail(name, value, f"a number in {interval}", optional)


def check_choice(name: str, value, allowed, optional: bool = False) -> None:
    """One of ``allowed``."""
    if optional and value is None:
        return
    if value not in tuple(allowed):
        tail = ", or None for the default" if optional else ""
        raise ValueError(f"{name}: got {value!r}; allowed: {', '.join(map(str, allowed))}{tail}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: got {value!r}; expected true or false")


def check_device(name: str, value) -> None:
    """A torch device string whose device exists here (never a silent CPU fallback)."""
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name}: got {value!r}; expected a torch device string: cpu, or cuda "
                         f"(cuda:N) on a machine with a GPU") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: got {value!r} but torch.cuda.is_available() is False; "
                             f"allowed: cpu, or cuda on a machine with a GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: got {value!r} but only {torch.cuda.device_count()} CUDA "
                             f"device(s) exist; allowed: cpu, cuda, cuda:0 .. "
                             f"cuda:{torch.cuda.device_count() - 1}")
    elif dev.type != "cpu":
        raise ValueError(f"{name}: got {value!r}; allowed: cpu, or cuda on a machine with a GPU")


def validated(config, who: str):
    """``config.validate()``, its message prefixed with the sampler name (``mala.step_size: ...``);
    returns ``config``. Samplers call it first thing in ``__init__``."""
    try:
        config.validate()
    except ValueError as exc:
        raise ValueError(f"{who}.{exc}") from None
    return config
