"""iDEM and pDEM: Iterated / plain Denoising Energy Matching (Akhound-Sadegh et al., ICML 2024),
constant for constant as the official code (jarridrb/DEM @ 8e95319) runs them.

A score network s_theta(t, x) regresses the clipped K-sample MC estimate S_K of the score of the
noised target p_t = p * N(0, h(t) I) at x_t = x_0 + sqrt(h(t)) eps, t ~ U(0, 1); samples come
from the reverse VE SDE driven by s_theta. iDEM draws x_0 from a replay buffer that the reverse
SDE refills after every 100 optimiser steps; pDEM draws x_0 from the prior N(0, h(1) I).
Pieces: :mod:`samplers.dem` (schedule, estimator, loss, networks, sde, buffer, config).

Stable interface (used by ``runners.bench`` to time one step and one generation)::

    sampler = IDEM(config); sampler.setup(target, generator)  # net, optimiser, schedule, buffer
    sampler.train_step(generator) -> float        # one optimiser step on a batch (B x K evals)
    sampler.generate(n, generator) -> [n, dim]    # reverse SDE, original coordinates
    sampler.outer_iteration(generator) -> float   # n_inner steps + generate + push (mean loss)
    samplers.dem.estimator.mc_score(x_t, h_t, energy_and_grad, K, generator, clip=..., group=...)

After ``setup`` these attributes are stable too: ``rc`` (the resolved config), ``space``
(:class:`samplers.dem.Space`, training coordinates), ``schedule``, ``net``, ``opt``, ``buffer``
(iDEM), ``steps``, ``outer``, and ``device_generator(generator)`` (the generator the sampler
draws from on its device).

``fit(target, budget, generator)`` runs outer iterations until the budget is spent. A *step*
(``Budget.max_steps``) is one optimiser step (``train_step``, B*K energy evaluations); a step
starts only if its B*K evaluations fit the energy cap. Every cap is checked before every step;
``max_seconds`` also before every Euler-Maruyama step of the buffer generation and of GMM-40's
estimator-driven start (1024 x 1000 x K evaluations by default), so a tiny time cap stops within
one step. That start runs only if it fits the energy cap whole (else the prior start); stopped by
``max_seconds`` it falls back to the prior start too. It is set-up, not a step: a steps-only
budget runs it whole. A generation interrupted by ``max_seconds`` pushes nothing (training is
over). A fit that ends before the first step keeps the untrained network and says so in
``info["warnings"]``.

Deliberate deviations from the official code (each also noted where it happens):
* No ReduceLROnPlateau: the official schedule monitors the DEM loss on noised VALIDATION
  samples, i.e. reference data (reference-idem.md §6.9); we keep the learning rate constant.
  (GMM-40 has no scheduler officially, so it is unaffected.) No checkpoint selection by val W2
  in the grid; ``python -m runners.curve ... select=val`` offers it for comparisons.
* The estimator's B x K x dim normals come from a counter-based generator that runs in parallel
  on CPU (samplers/dem/noise.py), not ``torch.randn``: an equally exact N(0, I) draw, fixed by
  the caller's generator; the official code's random numbers are not replayed (none are).
* pDEM skips the official per-epoch generation into a buffer that its training never reads
  (and GMM-40's estimator-driven initial buffer): same training, less compute.
* pDEM on LJ-55 is skipped (no official config; README: "convergence issues").
* Buffer insertions cost no energy evaluation: the official code evaluates log p~ of every
  inserted sample for logging and for a prioritised mode that is off. So fit spends exactly
  B x K evaluations per step (plus GMM-40's estimator-driven start); sample() spends only
  LJ-55's negative-time gradients (10 per sample).
* ``has_log_prob`` is False: the NLL pipeline of the paper (a CFM trained on iDEM samples,
  §3.4) is out of scope for now.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar

import torch

from . import register
from .allocator import retain_freed_memory
from .base import Budget, Diverged, below_one_step_warning, check_finite, count_network_passes
from .dem.buffer import ReplayBuffer
from .dem.config import DEMConfig, resolve, validate
from .dem.estimator import mc_score
from .dem.loss import dem_loss, lambda_weight
from .dem.networks import build_network
from .dem.schedule import GeometricSchedule
from .dem.sde import Interrupted, negative_time, reverse_sde
from .dem.space import Space


def adam(params: list, lr: float) -> torch.optim.Adam:
    """Adam with torch's defaults and no weight decay, as officially. Fused where torch has the
    kernel for the device (CPU since torch 2.4): the same update, in one pass over all parameters
    (measured with gradient clipping: DW-4 EGNN 1.0 ms vs 2.2 ms per step, LJ-13 1.4 vs 3.4 ms)."""
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=0.0, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch, or no fused kernel here
        return torch.optim.Adam(params, lr=lr, weight_decay=0.0)


@register
class IDEM:
    name: ClassVar[str] = "idem"
    pretty_name: ClassVar[str] = "iDEM"
    has_log_prob: ClassVar[bool] = False
    use_buffer: ClassVar[bool] = True
    Config: ClassVar[type] = DEMConfig

    def __init__(self, config: DEMConfig | None = None):
        cfg = config if config is not None else DEMConfig()
        if not isinstance(cfg, DEMConfig):
            raise TypeError(f"{self.name}: config must be a DEMConfig, got {type(cfg).__name__}")
        validate(cfg, self.name)
        self.config = cfg
        self.target = None
        self.network_evals = 0  # score-network passes, one per configuration (runner's column)
        self._pending_state: dict | None = None
        self._gen_pair: tuple | None = None

    # ------------------------------------------------------------------ configuration
    @classmethod
    def tiny_config(cls, target) -> DEMConfig:
        """A configuration that fits and samples in about a second on CPU (contract tests)."""
        return DEMConfig(n_mc=8, batch_size=32, n_inner=5, n_generate=64, n_integration_steps=20,
                         hidden=16, n_layers=1, n_init=64, buffer_min=64, buffer_size=1000,
                         gmm_init="prior", max_outer=2, sample_batch=256)

    @classmethod
    def supports(cls, target) -> bool | str:
        return True

    # ------------------------------------------------------------------ set-up
    def setup(self, target, generator: torch.Generator, clock=None) -> None:
        """Build schedule, network, optimiser and (iDEM) the initial buffer for ``target``.
        ``clock`` (a BudgetClock) lets the estimator-driven GMM start fall back to the prior
        when it would not fit the energy budget."""
        c = self.rc = resolve(self.config, target, self.name)
        retain_freed_memory()  # large edge tensors reuse mapped pages (samplers/allocator.py)
        self.target, self.device = target, torch.device(c.device)
        self.space = Space(target, c.coord_scale)
        self.schedule = GeometricSchedule(c.sigma_min, c.sigma_max)
        g = self._gen(generator)
        self.net = count_network_passes(build_network(
            c.network, target.dim, self.space.particles, c.hidden, c.n_layers, generator
        ).to(self.device), self)
        self._net_fn = torch.compile(self.net) if c.compile else self.net
        self.opt = adam(list(self.net.parameters()), c.lr)
        self.steps, self.outer, self.history = 0, 0, []
        self.init_mode = "none"
        self._stop = clock.out_of_time if clock is not None else None
        self.buffer = ReplayBuffer(target.dim, c.buffer_size, c.buffer_min, self.device) \
            if self.use_buffer else None
        self._fit_gen, self._partial = g, []
        if self._pending_state is not None:
            self._load(self._pending_state)
            if self._pending_state.get("generator") is not None:
                # after the (overwritten) initial network was drawn: the stream goes on exactly
                # where the saved fit stopped, so a continued fit equals one longer fit
                g.set_state(self._pending_state["generator"])
            self._pending_state = None
        elif self.use_buffer:
            self._init_buffer(g, clock)

    def _init_buffer(self, g, clock) -> None:
        c = self.rc
        mode = "prior" if self.space.particles else c.gmm_init
        cost = c.n_init * c.n_integration_steps * c.n_mc
        if mode == "estimator" and clock is not None and not clock.allows(cost, record=False):
            mode = "prior (estimator start does not fit the energy budget)"
        x = None
        if mode == "estimator":
            # Official GMM start: reverse SDE driven by the clipped MC estimator itself.
            def score(t, x):
                h = self.schedule.h(t).expand(x.shape[0])      # t is [1] in the SDE
                return mc_score(x, h, self.space.energy_and_grad, c.n_mc, g,
                                clip=c.score_clip or None, group=self.space.clip_group,
                                chunk=c.estimator_chunk)
            try:
                x = self._sde(score, c.n_init, g, stop=self._stop)
            except Interrupted as exc:
                done = str(exc).split("stopped after ")[-1]
                mode = (f"prior (estimator-driven start stopped by max_seconds="
                        f"{clock.budget.max_seconds:g} after {done} of its reverse SDE)")
        if x is None:
            x = self.space.prior(c.n_init, self.schedule.prior_std, g, self.device)
        self.init_mode = mode
        self._push(x)

    def device_generator(self, generator: torch.Generator) -> torch.Generator:
        """``generator`` itself on CPU; on another device a generator there, seeded once from it."""
        return self._gen(generator)

    def _gen(self, generator: torch.Generator) -> torch.Generator:
        if generator.device == self.device or self.device.type == "cpu":
            return generator
        if self._gen_pair is None or self._gen_pair[0] is not generator:
            seed = int(torch.randint(2**62, (1,), generator=generator))
            self._gen_pair = (generator, torch.Generator(self.device).manual_seed(seed))
        return self._gen_pair[1]

    def _require_setup(self, what: str) -> None:
        if self.target is None:
            raise RuntimeError(f"{self.name}.{what}: call setup(target, generator) or fit first")

    # ------------------------------------------------------------------ training
    def train_step(self, generator: torch.Generator) -> float:
        """One optimiser step on ``batch_size`` x_0 (buffer for iDEM, prior for pDEM); returns the loss."""
        self._require_setup("train_step")
        c, g, sp = self.rc, self._gen(generator), self.space
        B = c.batch_size
        x0 = self.buffer.sample(B, g) if self.use_buffer else \
            sp.prior(B, self.schedule.prior_std, g, self.device)
        t = torch.rand(B, generator=g, device=self.device)
        h = self.schedule.h(t)
        xt = sp.project(x0 + h.sqrt()[:, None] * torch.randn(x0.shape, generator=g, device=self.device))
        target = mc_score(xt, h, sp.energy_and_grad, c.n_mc, g, clip=c.score_clip or None,
                          group=sp.clip_group, chunk=c.estimator_chunk)
        loss = dem_loss(self._net_fn(t, xt), target,
                        lambda_weight(t, self.schedule, c.lambda_weighting, c.lambda_eps))
        value = float(loss.detach())
        if value != value or value in (float("inf"), float("-inf")):
            raise Diverged(f"{self.name}: training loss is {value} at step {self.steps}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), c.grad_clip)
        self.opt.step()
        self.steps += 1
        return value

    def outer_iteration(self, generator: torch.Generator) -> float:
        """``n_inner`` optimiser steps, then (iDEM) generate ``n_generate`` samples into the buffer."""
        losses = [self.train_step(generator) for _ in range(self.rc.n_inner)]
        self._end_outer(generator, losses)
        return sum(losses) / len(losses)

    def _end_outer(self, generator, losses, stop=None) -> bool:
        """Generate into the buffer (iDEM) and count the outer iteration; False (nothing pushed,
        not counted) when ``stop()`` interrupted the generation."""
        self.history.append(sum(losses) / len(losses))
        if self.use_buffer:
            try:
                y = self._generate(self.rc.n_generate, self._gen(generator), negative=False,
                                   stop=stop)
            except Interrupted:
                return False
            self._push(y)
        self.outer += 1
        return True

    def _push(self, y: torch.Tensor) -> None:
        check_finite(y, f"{self.name} generated samples")
        self.buffer.add(y)

    def fit(self, target, budget: Budget, generator: torch.Generator) -> dict[str, Any]:
        clock = budget.start(target)
        t0 = time.perf_counter()
        self.setup(target, generator, clock)
        c, step_cost = self.rc, self.rc.batch_size * self.rc.n_mc
        init_evals, done = clock.energy_evals, False
        while not done and (c.max_outer is None or self.outer < c.max_outer):
            # A continued fit first completes the outer iteration its budget had cut short.
            losses, self._partial = self._partial, []
            if losses:
                self.history.pop()  # that iteration's partial mean, recorded below last time
            while len(losses) < c.n_inner:
                if clock.exhausted(self.steps) or not clock.allows(step_cost):
                    done = True
                    break
                losses.append(self.train_step(generator))
            if losses and not done:
                done = not self._end_outer(generator, losses, stop=clock.out_of_time)
            elif losses:  # partial outer iteration: no generation (training is over)
                self.history.append(sum(losses) / len(losses))
                self._partial = losses
        if done and clock.binding == "none":  # a generation stopped by max_seconds
            clock.exhausted(self.steps)
        seconds = time.perf_counter() - t0
        warnings = []
        if self.init_mode.startswith("prior (estimator-driven start stopped"):  # _init_buffer
            warnings.append(f"the {self.init_mode[len('prior ('):-1]}: the buffer starts from the "
                            f"prior instead")
        if self.steps == 0:
            warnings.append(below_one_step_warning(
                clock, "training step", step_cost, "the samples are from the untrained network"))
        return {"steps": self.steps, "outer_iterations": self.outer, "init": self.init_mode,
                "budget_binding": clock.binding, "warnings": warnings,
                "init_energy_evals": init_evals,
                # None (not NaN) when the budget ended before the first step: nothing diverged
                "final_loss": self.history[-1] if self.history else None,
                "first_loss": self.history[0] if self.history else None,
                "loss_history": self.history[-50:], "fit_seconds": seconds,
                "config": dataclasses.asdict(self.rc)}

    # ------------------------------------------------------------------ sampling
    def _sde(self, score, n: int, g: torch.Generator, stop=None) -> torch.Tensor:
        x = self.space.prior(n, self.schedule.prior_std, g, self.device)
        return reverse_sde(score, x, self.schedule, self.rc.n_integration_steps,
                           self.rc.diffusion_scale, g, self.space.project, stop=stop)

    def _generate(self, n: int, g: torch.Generator, negative: bool, stop=None) -> torch.Tensor:
        """``[n, dim]`` in training coordinates, in batches of ``sample_batch``; ``stop()`` is
        asked before every SDE step (True raises ``Interrupted``)."""
        c, out = self.rc, []
        self.net.eval()
        try:
            for i in range(0, n, c.sample_batch):
                y = self._sde(self._net_fn, min(c.sample_batch, n - i), g, stop=stop)
                if negative and c.n_negative_steps:
                    y = negative_time(y, self.space.true_score, c.n_negative_steps, c.negative_dt,
                                      c.score_clip or None, self.space.project)
                out.append(check_finite(y, f"{self.name} samples"))
        finally:
            self.net.train()
        return torch.cat(out)

    def generate(self, n: int, generator: torch.Generator, negative_time: bool = False) -> torch.Tensor:
        """``[n, dim]`` from the reverse SDE in the target's original coordinates (on the
        sampler's device). ``negative_time`` adds the LJ-55 ascent steps, as ``sample`` does."""
        self._require_setup("generate")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{self.name}.generate: n must be a positive int, got {n!r}")
        return self.space.to_original(self._generate(n, self._gen(generator), negative_time))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``[n, dim]`` float32 on CPU, original coordinates (mean-free for particles)."""
        if self.target is None:
            raise RuntimeError(f"{self.name}.sample: call fit first")
        return self.generate(n, generator, negative_time=True).detach().to("cpu", torch.float32)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        self._require_setup("state_dict")
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "steps": self.steps,
                "outer": self.outer, "history": list(self.history), "init": self.init_mode,
                "buffer": self.buffer.state_dict() if self.buffer is not None else None,
                "partial": list(self._partial), "generator": self._fit_gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore before ``fit``/``setup`` (applied when the target is known), or right away."""
        if self.target is None:
            self._pending_state = state
        else:
            self._load(state)

    def _load(self, s: dict) -> None:
        self.net.load_state_dict(s["net"])
        self.opt.load_state_dict(s["opt"])
        self.steps, self.outer, self.history, self.init_mode = \
            s["steps"], s["outer"], list(s["history"]), s["init"]
        self._partial = list(s.get("partial", []))
        if self.buffer is not None and s["buffer"] is not None:
            self.buffer.load_state_dict(s["buffer"])


@register
class PDEM(IDEM):
    """pDEM: x_0 from the prior N(0, h(1) I) (mean-free for particles) instead of a buffer."""

    name: ClassVar[str] = "pdem"
    pretty_name: ClassVar[str] = "pDEM"
    use_buffer: ClassVar[bool] = False

    @classmethod
    def supports(cls, target) -> bool | str:
        if getattr(target, "name", None) == "lj55":
            return "pDEM has no official LJ-55 configuration (README: convergence issues)"
        return True
