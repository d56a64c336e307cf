"""FAB: Flow Annealed importance sampling Bootstrap (Midgley et al., ICLR 2023).

A normalising flow q is trained to minimise the alpha = 2 divergence D_2(p || q), whose minimiser
is estimated with annealed importance sampling (AIS) that *targets p^2 / q*: the region where q
underestimates p. FAB with the prioritised replay buffer (the paper's Algorithm 2):

1. x_0 ~ q, K intermediate densities pi_k ∝ q^(1 - 2b_k) p̃^(2b_k), b linear in (0, 1], one
   transition per intermediate (``transition``): ``"hmc"`` (default), one HMC move of
   ``n_leapfrog`` leapfrog steps with a dual-averaged step size; or ``"metropolis"``, fab-torch's
   random-walk Metropolis (samplers/fab_ais.py), ``n_metropolis`` steps of std ``metropolis_step``
   (data units), no gradient. AIS log-weights log w = Σ_k (b_k - b_(k-1)) 2 [log p̃ - log q] at
   x_(k-1).
2. The AIS samples enter a FIFO buffer with log w and log q_old(x); ``n_updates_per_ais`` gradient
   steps follow on batches drawn from it ∝ w (``buffer_sampling``, samplers/fab_buffer.py; default
   as fab-torch: all of a round's batches at once, without replacement), loss = -mean w_adjust ·
   log q_θ(x), w_adjust = (q_old(x) / q_θ(x))^(α-1) detached and clipped at ``w_adjust_clip``
   (fab-torch's prioritised-buffer loss, α = 2): the weights were computed under the flow q_old
   current when the point was stored or last drawn, and w_adjust makes them weights for p^2/q_θ,
   so the stale part of the buffer does not bias the gradient. The drawn points are then re-weighted for the change of q: log w += (1 - α)(log q_new
   - log q_old), log q_old <- log q_new, with log q_new the value computed for the loss, before the
   optimiser step, as fab-torch (``buffer_adjust="before_step"``), or recomputed after it
   (``"after_step"``, earlier versions here). ``buffer_correction=False`` gives the uncorrected
   loss -mean log q(x), for comparison only.
3. lr constant or warm-up + cosine as the se3 configs (``lr_schedule``), a function of the step
   count (a continued fit stays on it); ``dtype`` float32/float64 (samples returned as float32).

Flows (``flow``). ``"realnvp"`` (default; non-equivariant): a zero-initialised RealNVP (it starts as
its base N(0, sigma^2)), on particle targets on an orthonormal (Helmert) basis of the mean-free
subspace, so ``log_prob`` is a density on that (N-1)·D-dimensional subspace (``metrics.density``'s
convention). ``"se3_aug"`` (particle targets): the E(3)-equivariant augmented coupling flow of
Midgley et al. 2023 (samplers/se3_flow.py) as their FAB runs it: AIS, buffer and loss act on the
joint state u = [x in the Helmert basis, a] in data units (sigma is the base scale; step sizes are
in data units) with the exact joint log q(x, a) and the target p̃(x) pi(a|x), pi = N(x,
aug_scale^2) (same Z); ``log_prob(x)`` is the marginal estimate log mean_k q(x, a_k)/pi(a_k|x) over
``n_aug_samples`` fixed draws a_k ~ pi. HMC step sizes: one per intermediate, dual-averaged
(samplers/kernels.py) to acceptance 0.65 throughout training, as the intermediates move with q.

Cost per AIS round: n_ais · (1 + K · n_leapfrog) energy+gradient evaluations (HMC) or
n_ais · (1 + K · n_metropolis) energy evaluations (Metropolis), charged through the target;
training steps and ``sample`` / ``log_prob`` cost none.

Budget: a *step* (``Budget.max_steps``, ``max_iters``) is one gradient step. An AIS round runs only
if its whole cost fits the energy cap; the caps are checked before every round, the step and time
caps before every gradient step (steps cost no energy: the round that spent the last evaluations
still trains on its samples). No step happens before the buffer holds ``buffer_min`` points; a
budget that ends sooner leaves the untrained flow (base N(0, sigma^2 I)), said in ``warnings``.
Defaults: lr 1e-4, batch 128, grad-norm clip 100, buffer 12800 / 1280, 4 updates per round as
fab-torch's experiments/config/gmm.yaml; w_adjust clip 10 as their trainer's and the se3 configs'
default (gmm.yaml sets none). Ours, not their GMM run: K = 2 HMC intermediates (5 leapfrog steps,
dual-averaged), float32, a RealNVP of 10 x 128, so one gradient-informed kernel and cost formula
serve every target; their run (1 Metropolis intermediate, step 5.0, float64) is paper.yaml's gmm40.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from . import fab_ais, fab_buffer, fab_state, kernels, register
from .base import Budget, below_one_step_warning, check_finite, validated
from .fab_config import FLOWS, FABConfig, buffer_loss, warmup_cosine_lr  # noqa: F401 (re-exported)
from .pis import SIGMA_DEFAULTS, _target_name
from .realnvp import Coupling, RealNVP, helmert_basis  # noqa: F401 (re-exported)
from .se3_flow import AugmentedCouplingFlow, FlatAugmentedFlow, joint_log_p_and_grad

@register
class FAB:
    """FAB with a prioritised replay buffer, AIS with HMC towards p^2/q, and a RealNVP or the
    E(3)-equivariant augmented coupling flow (``flow``)."""

    name: ClassVar[str] = "fab"
    pretty_name: ClassVar[str] = "FAB"
    has_log_prob: ClassVar[bool] = True
    has_importance_weights: ClassVar[bool] = False
    Config: ClassVar[type] = FABConfig

    def __init__(self, config: FABConfig | None = None):
        cfg = config if config is not None else FABConfig()
        if not isinstance(cfg, FABConfig):
            raise TypeError(f"fab: config must be a FABConfig, got {type(cfg).__name__}")
        validated(cfg, "fab")
        self.config = cfg
        self.flow: RealNVP | None = None
        self._pending_state: dict | None = None   # a state_dict loaded before fit
        self._train: dict | None = None           # optimiser, buffer, counts after fit
        self.network_evals = 0  # flow passes (all couplings), one per configuration

    @classmethod
    def tiny_config(cls, target) -> FABConfig:
        return FABConfig(sigma=SIGMA_DEFAULTS.get(_target_name(target), 1.0), n_layers=2,
                         hidden=16, batch_size=32, buffer_min=128, buffer_size=256,
                         n_leapfrog=2, max_iters=8, sample_batch=256)

    # ------------------------------------------------------------------ coordinates
    def _bind(self, target, generator):
        cfg = self.config
        self.target, self.device = target, torch.device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype)
        self.sigma = float(cfg.sigma if cfg.sigma is not None else SIGMA_DEFAULTS.get(target.name, 1.0))
        particles = getattr(target, "n_particles", None) is not None
        self.basis = (helmert_basis(target.n_particles, target.spatial_dim).to(self.device,
                                                                              self.dtype)
                      if particles else None)
        self.aug = cfg.flow == "se3_aug"
        if self.aug:
            if not particles:
                raise ValueError(f"flow: 'se3_aug' needs a particle target (n_particles, "
                                 f"spatial_dim); {target.name} has none; use flow=realnvp")
            # the joint flow works in data units: sigma is its base scale, u = [x basis, a]
            self._eval_seed = int(torch.randint(2 ** 62, (1,), generator=generator))
            self.flow = FlatAugmentedFlow(AugmentedCouplingFlow(
                target.n_particles, target.spatial_dim, generator, n_aug=cfg.n_aug,
                n_layers=cfg.n_layers, hidden=cfg.hidden, n_blocks=cfg.egnn_blocks,
                n_features=cfg.egnn_features, sigma=self.sigma, aug_scale=cfg.aug_scale),
                self.basis).to(self.device, self.dtype)
            self.d_eff = self.flow.dim
            return
        self.d_eff = self.basis.shape[1] if particles else target.dim
        self.flow = RealNVP(self.d_eff, cfg.n_layers, cfg.hidden, generator)
        for m in self.flow.modules():
            if isinstance(m, nn.Linear):
                if getattr(m, "zero_init", False):
                    nn.init.zeros_(m.weight), nn.init.zeros_(m.bias)
                else:
                    b = 1 / math.sqrt(m.in_features)
                    nn.init.uniform_(m.weight, -b, b, generator=generator)
                    nn.init.uniform_(m.bias, -b, b, generator=generator)
        self.flow.to(self.device, self.dtype)

    def _to_x(self, u):   # flow space -> original flat coordinates
        if self.aug:
            return self.flow.split(u)[0].reshape(u.shape[0], -1)
        y = self.sigma * u
        return y if self.basis is None else y @ self.basis.T

    def _to_u(self, x):
        y = x if self.basis is None else x @ self.basis
        return y / self.sigma

    def _log_q_u(self, u):
        self.network_evals += u.shape[0]
        return self.flow.log_prob(u)

    def _flow_sample(self, n: int, generator):
        self.network_evals += n
        return self.flow.sample(n, generator, self.device)

    def _log_p_u(self, u):
        """(log p̃ in u-space [n], its gradient [n, d_eff]); charged to the target."""
        if self.aug:
            return joint_log_p_and_grad(self.flow, self.target, u)
        e, g = self.target.energy_and_grad(self._to_x(u.detach()))
        g = g.to(u)
        g_u = -self.sigma * (g if self.basis is None else g @ self.basis)
        return -e.to(u) + self.d_eff * math.log(self.sigma), g_u

    def _log_p_and_q(self, u):
        """(log p̃, log q) ``[n]`` in u-space without gradients (Metropolis); the energy is charged
        to the target, one evaluation per row."""
        with torch.no_grad():
            if self.aug:
                x, a = self.flow.split(u)
                lp = -self.target.energy(x.reshape(x.shape[0], -1)).to(u) \
                    + self.flow.flow.aux_log_prob(a, x)
            else:
                lp = -self.target.energy(self._to_x(u)).to(u) + self.d_eff * math.log(self.sigma)
            return lp, self._log_q_u(u)

    # ------------------------------------------------------------------ AIS
    def _log_q_and_grad(self, u):
        with torch.enable_grad():
            v = u.detach().requires_grad_(True)
            lq = self._log_q_u(v)
            (gq,) = torch.autograd.grad(lq.sum(), v)
        return lq.detach(), gq

    def _ais(self, n, generator):
        """AIS from q to p^2/q; returns (u [n, d], log w [n]) detached. Costs n energy evaluations
        for x_0 plus n per leapfrog step."""
        cfg = self.config
        betas = torch.linspace(0, 1, cfg.n_intermediate + 2)[1:].tolist()
        with torch.no_grad():
            u, _ = self._flow_sample(n, generator)
        metropolis = cfg.transition == "metropolis"
        if metropolis:
            log_p, log_q = self._log_p_and_q(u)
        else:
            log_q, grad_q = self._log_q_and_grad(u)
            log_p, grad_p = self._log_p_u(u)
        log_w = torch.zeros(n, device=self.device, dtype=self.dtype)
        b_prev = 0.0
        for k, b in enumerate(betas):
            log_w = log_w + (b - b_prev) * 2 * (log_p - log_q)
            b_prev = b
            if k == len(betas) - 1:
                break
            if metropolis:
                # rw_steps are in data units; u is x / sigma for the RealNVP, data units for se3_aug
                scale = 1.0 if self.aug else self.sigma
                u, log_p, log_q, acc, prob = fab_ais.metropolis_transition(
                    u, log_p, log_q, b, self._log_p_and_q, [s / scale for s in self.rw_steps[k]],
                    generator)
                self.accept[k] = sum(acc) / len(acc)
                if cfg.metropolis_adapt:
                    self.rw_steps[k] = [fab_ais.adapt_step(s, p, cfg.target_accept)
                                        for s, p in zip(self.rw_steps[k], prob)]
                continue
            last = {}

            def energy_and_grad(v, b=b, last=last):
                # pi_b ∝ q^(1-2b) p̃^(2b): energy -(1-2b) log q - 2b log p̃
                lp, gp = self._log_p_u(v)
                lq, gq = self._log_q_and_grad(v)
                last.update(lp=lp, gp=gp, lq=lq, gq=gq)
                return -(1 - 2 * b) * lq - 2 * b * lp, -(1 - 2 * b) * gq - 2 * b * gp

            state = kernels.State(u, -(1 - 2 * b) * log_q - 2 * b * log_p,
                                  -(1 - 2 * b) * grad_q - 2 * b * grad_p)
            state, acc = kernels.hmc_step(state, energy_and_grad, self.step_sizes[k],
                                          cfg.n_leapfrog, generator)
            self.step_sizes[k] = self.adapters[k].update(float(acc.float().mean()))
            self.accept[k] = float(acc.float().mean())
            # The last leapfrog position is the proposal: reuse its log p̃ and log q where accepted
            # (the flow is unchanged during AIS, so this is the same value, one pass fewer).
            log_p = torch.where(acc, last["lp"], log_p)
            grad_p = torch.where(acc[:, None], last["gp"], grad_p)
            log_q = torch.where(acc, last["lq"], log_q)
            grad_q = torch.where(acc[:, None], last["gq"], grad_q)
            u = state.x
        return u.detach(), log_w.detach()

    # ------------------------------------------------------------------ public API
    def fit(self, target, budget: Budget, generator: torch.Generator) -> dict[str, Any]:
        if not isinstance(budget, Budget):
            raise TypeError(f"fab.fit: budget must be a Budget, got {type(budget).__name__}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"fab.fit: generator must be a torch.Generator, "
                            f"got {type(generator).__name__}")
        cfg = self.config
        clock = budget.start(target)  # max_seconds covers the set-up too
        self._bind(target, generator)
        opt = torch.optim.Adam(self.flow.parameters(), lr=cfg.lr)
        self.adapters = [kernels.Adapter(cfg.step_size, cfg.target_accept)
                         for _ in range(cfg.n_intermediate)]
        self.step_sizes = [cfg.step_size] * cfg.n_intermediate
        self.rw_steps = [[cfg.metropolis_step] * cfg.n_metropolis
                         for _ in range(cfg.n_intermediate)]
        self.accept = [float("nan")] * cfg.n_intermediate
        buf_u = torch.empty(0, self.d_eff, device=self.device, dtype=self.dtype)
        buf_lw = torch.empty(0, device=self.device, dtype=self.dtype)
        buf_lq = torch.empty(0, device=self.device, dtype=self.dtype)
        moves = cfg.n_metropolis if cfg.transition == "metropolis" else cfg.n_leapfrog
        cost = cfg.batch_size * (1 + cfg.n_intermediate * moves)
        steps, rounds, last = 0, 0, {}
        if self._pending_state is not None:   # continue a saved fit (runners/ladder.py, cell.py)
            (buf_u, buf_lw, buf_lq), steps, rounds, last = fab_state.restore(
                self, self._pending_state, opt, generator)
            self._pending_state = None
        done = False
        while (not done and (cfg.max_iters is None or steps < cfg.max_iters)
               and not clock.exhausted(steps) and clock.allows(cost)):
            u, log_w = self._ais(cfg.batch_size, generator)
            rounds += 1
            keep = torch.isfinite(log_w)
            with torch.no_grad():
                lq = self._log_q_u(u[keep])
            buf_u, buf_lw, buf_lq = fab_buffer.append((buf_u, buf_lw, buf_lq),
                                                      (u[keep], log_w[keep], lq), cfg.buffer_size)
            last["ais_log_z2"] = float(torch.logsumexp(log_w.double(), 0) - math.log(len(log_w)))
            if buf_u.shape[0] < cfg.buffer_min:
                continue
            batches = (None if cfg.buffer_sampling == "per_step" else fab_buffer.draw_round(
                buf_lw, cfg.n_updates_per_ais, cfg.batch_size, cfg.buffer_sampling, generator))
            for j in range(cfg.n_updates_per_ais):
                if cfg.max_iters is not None and steps >= cfg.max_iters:
                    break
                # Gradient steps cost no energy: a round whose AIS spent the last evaluations
                # still trains on them (so a fit continued from this state, runners/ladder.py,
                # equals one longer fit); only the step and time caps stop the updates.
                max_steps = clock.budget.max_steps
                if (max_steps is not None and steps >= max_steps) or clock.out_of_time():
                    clock.exhausted(steps)
                    done = True
                    break
                idx = (fab_buffer.categorical(buf_lw, cfg.batch_size, generator)
                       if batches is None else batches[j]).to(self.device)
                for group in opt.param_groups:   # a function of the step count: continues as is
                    group["lr"] = cfg.lr_at(steps)
                log_q = self._log_q_u(buf_u[idx])
                loss = (buffer_loss(log_q, buf_lq[idx], alpha=2.0, clip=cfg.w_adjust_clip)
                        if cfg.buffer_correction else -log_q.mean())
                check_finite(loss.detach(), "fab: training loss")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.flow.parameters(), cfg.max_grad_norm)
                opt.step()
                steps += 1
                with torch.no_grad():  # q changed: re-weight the drawn points for p^2/q
                    lq_new = (log_q.detach() if cfg.buffer_adjust == "before_step"
                              else self._log_q_u(buf_u[idx]))
                    buf_lw[idx], buf_lq[idx] = fab_buffer.reweight(buf_lw[idx], buf_lq[idx],
                                                                   lq_new)
                last["loss"] = float(loss.detach())
                last["lr"] = cfg.lr_at(steps - 1)
        self._train = {"opt": opt, "buffer": (buf_u, buf_lw, buf_lq), "steps": steps,
                       "rounds": rounds, "last": dict(last), "generator": generator.get_state()}
        warnings = []
        if steps == 0:
            rounds_needed = -(-cfg.buffer_min // cfg.batch_size)
            warnings.append(
                below_one_step_warning(
                    clock, "training step", rounds_needed * cost,
                    f"the samples are from the untrained flow (the first gradient step needs "
                    f"buffer_min={cfg.buffer_min} buffered points, ~{rounds_needed} AIS rounds of "
                    f"{cost} evaluations; {rounds} ran)")
                if clock.binding != "none" else
                "max_iters=0: no training step ran; the samples are from the untrained flow")
        return {"steps": steps, "ais_rounds": rounds, "sigma": self.sigma, "flow": cfg.flow,
                "budget_binding": clock.binding, "warnings": warnings,
                "buffer": int(buf_u.shape[0]), "energy_evals": clock.energy_evals,
                "seconds": clock.seconds, "transition": cfg.transition,
                "hmc_step_sizes": list(self.step_sizes),
                "metropolis_steps": [list(s) for s in self.rw_steps],
                "ais_accept": list(self.accept), **{f"train_{k}": v for k, v in last.items()}}

    # ------------------------------------------------------------------ continuation
    def state_dict(self) -> dict[str, Any]:
        """Flow, optimiser, replay buffer, HMC step sizes and adaptation, counts and the fit
        generator's state after ``fit``: a later fit after ``load_state_dict`` continues as one
        longer fit (bit for bit when the earlier fit stopped on its energy cap, which it checks
        only between AIS rounds)."""
        if self._train is None:
            raise RuntimeError("fab.state_dict: call fit first")
        return fab_state.saved(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Before ``fit``: applied when the target is bound, and training continues from it.
        After ``fit``: the flow is restored at once (``sample``/``log_prob`` as saved)."""
        fab_state.check_flow_kind(state, self.config.flow)
        if self.flow is None:
            self._pending_state = state
        else:
            self.flow.load_state_dict(state["flow"])
            self._eval_seed = state["eval_seed"]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``[n, dim]`` float32 CPU flow samples (no energy evaluations)."""
        if self.flow is None:
            raise RuntimeError("fab: call fit(target, budget, generator) before sampling")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"fab: n must be a positive int, got {n!r}")
        out = []
        for start in range(0, n, self.config.sample_batch):
            u, _ = self._flow_sample(min(self.config.sample_batch, n - start), generator)
            x = self._to_x(u)
            check_finite(x, "fab: samples")
            out.append(x.float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log q(x) ``[n]`` for ``x [n, dim]`` in original coordinates (particles: mean-free, a
        density on the mean-free subspace)."""
        if self.flow is None:
            raise RuntimeError("fab: call fit(target, budget, generator) before log_prob")
        if x.ndim != 2 or x.shape[1] != self.target.dim:
            raise ValueError(f"fab.log_prob: x must have shape [n, {self.target.dim}], "
                             f"got {tuple(x.shape)}")
        if self.aug:   # marginal estimate, the same draws of a at every call
            g = torch.Generator(device=self.device).manual_seed(self._eval_seed)
            xp = x.to(self.device, self.dtype).reshape(x.shape[0], self.target.n_particles,
                                                          self.target.spatial_dim)
            return self.flow.flow.log_prob(xp, self.config.n_aug_samples, g).cpu()
        u = self._to_u(x.to(self.device, self.dtype))
        return (self._log_q_u(u) - self.d_eff * math.log(self.sigma)).cpu()
