"""PIS: the Path Integral Sampler (Zhang & Chen, ICLR 2022), and the shared controlled-SDE machinery.

A network control u steers a diffusion started from a Dirac at 0 so that its state at time T
follows p ∝ p̃ = exp(-E). Working in rescaled coordinates z = x / sigma (so the reference process
is a standard Brownian motion, as the iDEM code's PIS does for GMM in its 1/50-normalised space):

    z_{k+1} = z_k + u_k dt + sqrt(dt) eps_k,   u_k = NN(t_k, z_k) + NN_t(t_k) * clip(sigma ∇log p̃(sigma z_k)),

dt = T / N (Euler-Maruyama, N steps, default 100). Against the uncontrolled chain (u = 0), whose
terminal law is exactly N(0, T I), the Radon-Nikodym derivative of the discrete path is exact:
log q/p0 = sum_k [0.5 ||u_k||^2 dt + sqrt(dt) u_k . eps_k] (discrete Girsanov). Hence

    log w = log p̃(x_N) - log N(x_N; 0, sigma^2 T I) - sum_k [0.5 ||u_k||^2 dt + sqrt(dt) u_k . eps_k]

are exact importance weights of the final state: E[w] = Z and E[log w] <= log Z for every control,
with no discretisation bias. Training minimises the KL estimate (PIS loss, the official iDEM
``pis_module``): mean over the batch of sum_k 0.5 ||u_k||^2 dt + log N(x_N) - log p̃(x_N),
backpropagated through the whole simulated path; the stochastic-integral term has mean zero and
is left out of the loss, as in PIS, but kept in the weights.

Particle targets (n_particles set): noise, control and state are projected onto the mean-free
subspace, the reference law is the mean-free Gaussian with (N-1)·D degrees of freedom, and Z is
the integral of exp(-E) over that subspace (the convention of ``metrics.density``).

Choices that are ours (the official repo's PIS does not run, reference-idem.md §4.10, and the
baselines' published hyperparameters are not known, §5):
* The target gradient enters the control as a detached, clipped feature (no Hessian terms), as
  DDS's PIS-Grad network with ``stop_grad`` does; non-finite components (e.g. the LJ/DW-4 gradient
  at the Dirac start, where all particles coincide and autograd gives 0·inf) are set to 0 first.
* The terminal gradient used in backpropagation is clipped at the same ±``score_clip``, in the
  same units (``score_clip_units``: ``"z"`` clips σ·∇log p̃, as iDEM's PIS clips in its
  normalised space; ``"data"`` clips ∇log p̃ before the scaling, as official DDS does); the loss
  *value* and the weights use the exact energy.
* A *step* (``Budget.max_steps``, and ``max_iters``) is one optimiser step: one simulated batch
  of ``batch_size`` paths, costing ``batch_size · (n_steps + 1)`` energy(+gradient) evaluations
  (the score feature at every SDE step plus the terminal energy). The energy cap, ``max_seconds``
  and ``max_steps`` are checked before every optimiser step; a step starts only if its whole cost
  fits the energy cap. A budget that ends before the first step leaves the untrained control
  (u = 0 at initialisation: the reference process) and says so in ``info["warnings"]``.
* ``has_log_prob`` is False: PIS gives path-wise weights, not a marginal density. Instead
  ``has_importance_weights`` is True and :meth:`log_weights` returns ``(samples, log_w)``, from
  which log Z = logmeanexp(log w) and ESS = 1 / (n Σ softmax(log w)^2) follow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from . import register
from .base import (Budget, Diverged, below_one_step_warning, check_choice, check_device,
                   check_finite, check_int, check_nonnegative, check_positive,
                   count_network_passes, validated)
from .nets import NETWORKS, ControlNet, build_control_net

# Per-target reference scale sigma (original units). GMM-40: the prior must cover [-40, 40]^2 (the
# mixture's per-axis std is ~23); particles: about the reference sets' per-coordinate spread
# (DW-4 1.8, LJ-13 0.68 measured on the test splits) or a little wider.
SIGMA_DEFAULTS = {"gmm40": 40.0, "dw4": 2.0, "lj13": 1.0, "lj55": 1.0}


CLIP_UNITS = ("z", "data")


def clipped_score(grad_e: torch.Tensor, sigma: float, clip: float, units: str) -> torch.Tensor:
    """-sigma ∇E in z-units, clipped elementwise at ±clip either in z-units (``"z"``) or, as
    official DDS clips ∇log p̃ with ``lgv_clip``, in data units before the scaling (``"data"``).
    Non-finite components become 0."""
    s = torch.nan_to_num(-grad_e, nan=0.0, posinf=0.0, neginf=0.0)
    if units == "data":
        return sigma * s.clamp(-clip, clip)
    return (sigma * s).clamp(-clip, clip)


def _target_name(target) -> str:
    return target if isinstance(target, str) else getattr(target, "name", "")


def logmeanexp(v: torch.Tensor) -> float:
    v = v.double()
    return float(torch.logsumexp(v, 0) - math.log(v.shape[0]))


def normalised_ess(log_w: torch.Tensor) -> float:
    """1 / (n Σ softmax(log w)^2) in (0, 1]; 0 when no weight is finite."""
    log_w = log_w.double()
    if not torch.isfinite(log_w).any():
        return 0.0
    w = torch.softmax(log_w, 0)
    return float(1.0 / (log_w.shape[0] * w.pow(2).sum()))


@dataclass
class PISConfig:
    """PIS hyperparameters. ``sigma=None`` takes the per-target default (SIGMA_DEFAULTS, 1.0 for
    unknown targets). ``max_iters=None`` trains until the budget is spent."""

    sigma: float | None = None      # diffusion scale; terminal reference N(0, sigma^2 T I)
    t_final: float = 1.0            # T (iDEM pis.yaml time_range)
    n_steps: int = 100              # Euler-Maruyama steps N
    batch_size: int = 256           # trajectories per optimiser step
    hidden: int = 64                # iDEM pis.yaml: FourierMLP channels 64
    n_layers: int = 2               # iDEM pis.yaml: num_layers 2
    network: str = "mlp"            # "mlp" (iDEM's PIS) | "egnn" (equivariant, particle targets)
    lr: float = 1e-3
    weight_decay: float = 1e-7
    score_clip: float = 1e4         # elementwise clip of sigma * grad log p~ (iDEM's ±1e4)
    score_clip_units: str = "z"     # "z": clip sigma·∇log p̃ (iDEM's PIS, normalised space);
                                    # "data": clip ∇log p̃ in data units, then scale by sigma
    max_grad_norm: float | None = None   # optional clip of the parameter-gradient norm
    max_iters: int | None = None
    sample_batch: int = 1000        # trajectories per chunk in sample / log_weights
    device: str = "cpu"

    def validate(self) -> None:
        """Raise ValueError (message starts with the field name) for any value out of range."""
        validate_sde_config(self)
        check_positive("t_final", self.t_final)


def validate_sde_config(cfg) -> None:
    """The fields PIS and DDS share (see ``PISConfig.validate``)."""
    check_positive("sigma", cfg.sigma, optional=True)
    for name in ("n_steps", "batch_size", "hidden", "n_layers", "sample_batch"):
        check_int(name, getattr(cfg, name))
    check_positive("lr", cfg.lr)
    check_nonnegative("weight_decay", cfg.weight_decay)
    check_positive("score_clip", cfg.score_clip)
    check_choice("network", cfg.network, NETWORKS)
    check_choice("score_clip_units", cfg.score_clip_units, CLIP_UNITS)
    if not isinstance(getattr(cfg, "stl", False), bool):
        raise ValueError(f"stl: got {cfg.stl!r}; expected true or false")
    check_positive("max_grad_norm", cfg.max_grad_norm, optional=True)
    check_int("max_iters", cfg.max_iters, minimum=0, optional=True)
    check_device("device", cfg.device)


class ControlledSDESampler:
    """Shared training / sampling loop of PIS and DDS (subclasses define the reference process).

    Subclass hooks, all in z = x / sigma units: ``_build_schedule()`` sets ``self._times`` (``[N]``
    network times in [0, 1]); ``_init_state(n, generator)`` -> ``[n, dim]``;
    ``_step(z, u, eps, k)`` -> (z_next, quad ``[n]``, stoch ``[n]``) with log q/p0 of the step =
    quad + stoch and E[stoch] = 0; ``_log_ref_terminal(z)`` -> ``[n]`` log-density of the reference
    chain's terminal law (on the d_eff-dimensional state space).
    """

    has_log_prob: ClassVar[bool] = False
    has_importance_weights: ClassVar[bool] = True
    Config: ClassVar[type]

    def __init__(self, config=None):
        cfg = config if config is not None else self.Config()
        if not isinstance(cfg, self.Config):
            raise TypeError(f"{self.name}: config must be a {self.Config.__name__}, "
                            f"got {type(cfg).__name__}")
        validated(cfg, self.name)
        self.config = cfg
        self.net: ControlNet | None = None
        self.target = None
        self.steps = 0
        self.network_evals = 0  # control-network passes, one per configuration (runner's column)
        self._pending_state: dict | None = None

    # ------------------------------------------------------------------ configuration
    @classmethod
    def tiny_config(cls, target):
        """A configuration that fits and samples in about a second on CPU (contract tests)."""
        return cls.Config(sigma=SIGMA_DEFAULTS.get(_target_name(target), 1.0), n_steps=10,
                          batch_size=16, hidden=16, n_layers=1, max_iters=3, sample_batch=256)

    def _bind(self, target, generator: torch.Generator) -> None:
        cfg = self.config
        self.target = target
        self.sigma = float(cfg.sigma if cfg.sigma is not None
                           else SIGMA_DEFAULTS.get(target.name, 1.0))
        self.dim = int(target.dim)
        self.particles = (None if getattr(target, "n_particles", None) is None
                          else (int(target.n_particles), int(target.spatial_dim)))
        self.d_eff = self.dim if self.particles is None else self.dim - self.particles[1]
        self.device = torch.device(cfg.device)
        self._build_schedule()
        self.net = count_network_passes(build_control_net(
            cfg.network, self.dim, cfg.hidden, cfg.n_layers, self.particles, generator
        ).to(self.device), self)

    # ------------------------------------------------------------------ public API
    def fit(self, target, budget: Budget, generator: torch.Generator) -> dict[str, Any]:
        if not isinstance(budget, Budget):
            raise TypeError(f"{self.name}.fit: budget must be a Budget, got {type(budget).__name__}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"{self.name}.fit: generator must be a torch.Generator, "
                            f"got {type(generator).__name__}")
        cfg = self.config
        clock = budget.start(target)  # max_seconds covers the set-up too
        self._bind(target, generator)
        opt = self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr,
                                          weight_decay=cfg.weight_decay)
        self.steps = 0
        self._generator = generator
        if self._pending_state is not None:  # resume from a checkpoint (runners/cell.py)
            self._load(self._pending_state)
            if self._pending_state.get("generator") is not None:
                # after _bind drew the (overwritten) initial network: the stream goes on exactly
                # where the saved fit stopped, so a continued fit equals one longer fit
                generator.set_state(self._pending_state["generator"])
            self._pending_state = None
        cost = cfg.batch_size * (cfg.n_steps + 1)  # N score calls + 1 terminal energy_and_grad
        it, last = self.steps, {}
        while ((cfg.max_iters is None or it < cfg.max_iters)
               and not clock.exhausted(it) and clock.allows(cost)):
            loss, log_w = self._loss(cfg.batch_size, generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm)
            for p in self.net.parameters():
                if p.grad is not None and not torch.isfinite(p.grad).all():
                    raise Diverged(f"{self.name}: non-finite parameter gradient at iteration {it}")
            opt.step()
            it = self.steps = it + 1
            last = {"loss": float(loss.detach()), "elbo": float(log_w.mean()), "log_z": logmeanexp(log_w),
                    "ess": normalised_ess(log_w)}
        warnings = []
        if it == 0:
            warnings.append(
                below_one_step_warning(clock, "training step", cost,
                                       "the samples are from the untrained model")
                if clock.binding != "none" else
                "max_iters=0: no training step ran; the samples are from the untrained model")
        return {"steps": it, "sigma": self.sigma, "n_sde_steps": cfg.n_steps,
                "energy_evals": clock.energy_evals, "seconds": clock.seconds,
                "budget_binding": clock.binding, "warnings": warnings,
                **{f"train_{k}": v for k, v in last.items()}}

    def state_dict(self) -> dict[str, Any]:
        """Network, optimiser, step count and the fit generator's state. Saved after ``fit`` (the
        rung of a budget ladder), a later fit after ``load_state_dict`` continues bit for bit as
        one longer fit; saved mid-step (a preemption checkpoint) it is only approximately so."""
        if self.net is None:
            raise RuntimeError(f"{self.name}.state_dict: call fit first")
        gen = getattr(self, "_generator", None)
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "steps": self.steps,
                "sigma": self.sigma, "generator": gen.get_state() if gen is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; before ``fit`` it is applied once the target is bound
        (training then continues from ``steps``), after ``fit`` at once."""
        if self.net is None:
            self._pending_state = state
        else:
            self._load(state)

    def _load(self, state: dict[str, Any]) -> None:
        if abs(state["sigma"] - self.sigma) > 1e-12:
            raise ValueError(f"{self.name}.load_state_dict: checkpoint sigma {state['sigma']} "
                             f"differs from the configured {self.sigma}")
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.steps = int(state["steps"])

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``[n, dim]`` float32 CPU samples x_N; charges n * N gradient evaluations (the control)."""
        return self._draw(n, generator, with_weights=False)[0]

    @torch.no_grad()
    def log_weights(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(samples ``[n, dim]`` float32, log w ``[n]`` float64) with E[w] = Z (see module doc).
        Charges n * N gradient and n * (N + 1) energy evaluations."""
        return self._draw(n, generator, with_weights=True)

    # ------------------------------------------------------------------ computation
    def _check_ready(self, n) -> None:
        if self.net is None:
            raise RuntimeError(f"{self.name}: call fit(target, budget, generator) before sampling")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{self.name}: n must be a positive int, got {n!r}")

    def _project(self, v: torch.Tensor) -> torch.Tensor:
        return self.net.project(v)

    def _score_feature(self, z: torch.Tensor) -> torch.Tensor:
        """clip(sigma ∇log p̃(sigma z)) = ∇_z log p̃ in z-units, detached; charges one
        energy+gradient evaluation per row."""
        _, grad_e = self.target.energy_and_grad(self.sigma * z.detach())
        return clipped_score(grad_e.to(z), self.sigma, self.config.score_clip,
                             self.config.score_clip_units)

    def _rollout(self, n: int, generator: torch.Generator,
                 control: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
                 stl: bool = False):
        """Simulate the controlled chain; returns z_N ``[n, dim]``, Σ quad ``[n]`` (differentiable),
        Σ stoch ``[n]`` (detached), and with ``stl`` the stick-the-landing term: the stochastic
        integral with the control's parameters frozen, differentiable through the states only."""
        z = self._init_state(n, generator)
        quad = z.new_zeros(n)
        stoch = z.new_zeros(n)
        stl_term = z.new_zeros(n)
        frozen = ({k: p.detach() for k, p in self.net.named_parameters()} if stl else None)
        for k in range(self.config.n_steps):
            s = self._score_feature(z)
            u = self._project(control(k, z, s))
            eps = self._project(torch.randn(n, self.dim, generator=generator).to(self.device))
            if stl:
                u_frozen = self._project(torch.func.functional_call(
                    self.net, frozen, (self._times[k], z, s)))
                stl_term = stl_term + self._step(z, u_frozen, eps, k)[2]
            z, q, st = self._step(z, u, eps, k)
            quad = quad + q
            stoch = stoch + st.detach()
        return (z, quad, stoch, stl_term) if stl else (z, quad, stoch)

    def _net_control(self, k: int, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.net(self._times[k], z, s)

    def _log_ref_x(self, z: torch.Tensor) -> torch.Tensor:
        """Reference terminal log-density in x units (Jacobian of x = sigma z on d_eff dims)."""
        return self._log_ref_terminal(z) - self.d_eff * math.log(self.sigma)

    def _loss(self, n: int, generator: torch.Generator, control=None):
        """KL estimate (mean over n paths) with a surrogate terminal term whose gradient is the
        clipped ∇_z log p̃; returns (loss, log_w ``[n]`` detached)."""
        stl = bool(getattr(self.config, "stl", False)) and control is None
        out = self._rollout(n, generator, control or self._net_control, stl=stl)
        z, quad, stoch = out[:3]
        energy, grad_e = self.target.energy_and_grad(self.sigma * z.detach())
        energy = energy.to(z)
        g_z = -clipped_score(grad_e.to(z), self.sigma, self.config.score_clip,
                             self.config.score_clip_units)
        log_p_sur = -energy - (g_z * (z - z.detach())).sum(-1)
        per_path = quad + self._log_ref_x(z) - log_p_sur
        if stl:  # zero mean, so the loss value is unchanged in expectation; lowers the variance
            per_path = per_path + out[3]
        loss = per_path.mean()
        check_finite(loss.detach(), f"{self.name}: training loss")
        log_w = (-energy - self._log_ref_x(z) - quad - stoch).detach().double().cpu()
        return loss, log_w

    def _draw(self, n: int, generator: torch.Generator, with_weights: bool, control=None):
        self._check_ready(n)
        xs, lws = [], []
        for start in range(0, n, self.config.sample_batch):
            m = min(self.config.sample_batch, n - start)
            z, quad, stoch = self._rollout(m, generator, control or self._net_control)
            x = self.sigma * z
            check_finite(x, f"{self.name}: samples")
            xs.append(x.float().cpu())
            if with_weights:
                energy = self.target.energy(x).to(z)
                lws.append((-energy - self._log_ref_x(z) - quad - stoch).double().cpu())
        samples = torch.cat(xs)
        return (samples, torch.cat(lws)) if with_weights else (samples, None)

    # ------------------------------------------------------------------ hooks
    def _build_schedule(self) -> None:
        raise NotImplementedError

    def _init_state(self, n, generator):
        raise NotImplementedError

    def _step(self, z, u, eps, k):
        raise NotImplementedError

    def _log_ref_terminal(self, z):
        raise NotImplementedError


def gaussian_log_density(z: torch.Tensor, var: float, d_eff: int) -> torch.Tensor:
    """log N(z; 0, var I) on a d_eff-dimensional space (z mean-free when d_eff < z.shape[-1])."""
    return -0.5 * z.pow(2).sum(-1) / var - 0.5 * d_eff * math.log(2 * math.pi * var)


@register
class PIS(ControlledSDESampler):
    """Path Integral Sampler (Zhang & Chen 2022), "t_tnet_grad" control of the iDEM code."""

    name = "pis"
    pretty_name = "PIS"
    Config = PISConfig

    def _build_schedule(self):
        n = self.config.n_steps
        self._dt = self.config.t_final / n
        self._times = [k / n for k in range(n)]  # t_k / T in [0, 1)

    def _init_state(self, n, generator):
        return torch.zeros(n, self.dim, device=self.device)  # Dirac at 0

    def _step(self, z, u, eps, k):
        dt = self._dt
        z_next = z + u * dt + math.sqrt(dt) * eps
        quad = 0.5 * dt * u.pow(2).sum(-1)
        stoch = math.sqrt(dt) * (u * eps).sum(-1)
        return z_next, quad, stoch

    def _log_ref_terminal(self, z):
        return gaussian_log_density(z, self.config.t_final, self.d_eff)
