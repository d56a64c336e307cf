"""The geometric (variance-exploding) noise schedule of DEM / iDEM.

Akhound-Sadegh et al. (ICML 2024) noise the data with x_t = x_0 + sqrt(h(t)) eps and sample with
the reverse VE SDE dx = -g(t)^2 s(t, x) dt + g(t) dW (run backwards from t = 1 to t = 0). The
official code's ``GeometricNoiseSchedule`` (the EDM form, Karras et al. 2022) is

    g(t) = sigma_min * r^t * sqrt(2 ln r),      r = sigma_max / sigma_min,
    h(t) = int_0^t g(s)^2 ds = sigma_min^2 (r^{2t} - 1),

so sqrt(h(1)) ~= sigma_max, which is also the prior's standard deviation. We evaluate h with
``expm1`` (identical in exact arithmetic; the plain form loses every digit for t ~ 1e-4 in
float32 when r = 1e5, as for GMM-40).

Per-target values (reference-idem.md §4.1): GMM-40 1e-5 -> 1.0 (in the 1/50-normalised
coordinates), DW-4 1e-5 -> 3, LJ-13 0.01 -> 2, LJ-55 0.5 -> 4.
"""
from __future__ import annotations

import math

import torch


class GeometricSchedule:
    """g(t) and h(t) of the geometric VE schedule; ``t`` a float or a tensor in [0, 1]."""

    def __init__(self, sigma_min: float, sigma_max: float):
        if not (sigma_min > 0 and sigma_max > sigma_min):
            raise ValueError(f"GeometricSchedule: need 0 < sigma_min < sigma_max, got "
                             f"sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.log_r = math.log(self.sigma_max / self.sigma_min)

    def g(self, t):
        """Diffusion coefficient g(t) (float in, float out; tensor in, tensor out)."""
        c = self.sigma_min * math.sqrt(2.0 * self.log_r)
        if isinstance(t, torch.Tensor):
            return c * torch.exp(self.log_r * t)
        return c * math.exp(self.log_r * t)

    def h(self, t):
        """Noise variance h(t) = int_0^t g^2 = sigma_min^2 (r^{2t} - 1)."""
        if isinstance(t, torch.Tensor):
            return self.sigma_min ** 2 * torch.expm1(2.0 * self.log_r * t)
        return self.sigma_min ** 2 * math.expm1(2.0 * self.log_r * t)

    @property
    def prior_std(self) -> float:
        """sqrt(h(1)): the scale of the sampler's Gaussian prior (official ``Prior(scale=h(1)**0.5)``)."""
        return math.sqrt(self.h(1.0))

    def __repr__(self) -> str:
        return f"GeometricSchedule(sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g})"
