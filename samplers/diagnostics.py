"""Convergence diagnostics for parallel MCMC chains: split-R̂ and effective sample size.

Pure functions of a ``[chains, draws]`` array of one scalar (e.g. the energy of each state).
They follow Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), "Rank-normalization, folding,
and localization: an improved R̂ for assessing convergence of MCMC", Bayesian Analysis 16(2):

* ``split_rhat``: each chain is cut in two halves (so a chain that drifts shows up as two chains
  that disagree), then R̂ = sqrt(var⁺ / W) with W the mean within-chain variance and
  var⁺ = (n-1)/n W + B/n (B/n the variance of the chain means). ``rank=True`` first replaces the
  draws by normal scores of their pooled ranks (the paper's rank-normalised R̂), which makes the
  value meaningful for heavy tails.
* ``ess``: multi-chain autocorrelation ρ_t = 1 - (W - mean_m γ_{m,t}) / var⁺ on the split chains,
  summed with Geyer's initial positive and monotone sequence; ESS = M·N / τ. ``rank=True`` (the
  default) gives the paper's "bulk ESS".

R̂ near 1 (< 1.01 strict, < 1.05 loose) and a bulk ESS of at least ~100 per chain-group are the
usual thresholds. These functions do not judge; callers report the numbers.
"""
from __future__ import annotations

import numpy as np
from scipy.special import ndtri
from scipy.stats import rankdata


def _as_chains(x, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"{what}: draws must have shape [chains, draws] (or [draws]), "
                         f"got shape {a.shape}")
    if a.shape[1] < 4:
        raise ValueError(f"{what}: need at least 4 draws per chain to split them, "
                         f"got {a.shape[1]}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: draws contain {int((~np.isfinite(a)).sum())} non-finite values")
    return a


def split_chains(x: np.ndarray) -> np.ndarray:
    """``[M, N]`` -> ``[2M, N//2]``: first and second half of each chain (middle draw dropped
    when N is odd)."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half:]], axis=0)


def rank_normalize(x: np.ndarray) -> np.ndarray:
    """Normal scores Φ⁻¹((r - 3/8) / (S + 1/4)) of the pooled ranks r (ties averaged), S draws."""
    r = rankdata(x, method="average").reshape(x.shape)
    return ndtri((r - 0.375) / (x.size + 0.25))


def _var_plus_and_w(x: np.ndarray) -> tuple[float, float]:
    n = x.shape[1]
    w = x.var(axis=1, ddof=1).mean()
    b_over_n = x.mean(axis=1).var(ddof=1)
    return (n - 1) / n * w + b_over_n, w


def split_rhat(draws, rank: bool = False) -> float:
    """Split-R̂ of ``draws`` ``[chains, draws]`` (classic; ``rank=True``: rank-normalised).

    Returns 1.0 for constant draws (nothing to disagree about)."""
    x = split_chains(_as_chains(draws, "split_rhat"))
    if rank:
        x = rank_normalize(x)
    var_plus, w = _var_plus_and_w(x)
    if w == 0.0:
        return 1.0 if var_plus == 0.0 else float("inf")
    return float(np.sqrt(var_plus / w))


def _autocovariance(x: np.ndarray) -> np.ndarray:
    """Biased autocovariance γ_t (divided by N) of each row, via FFT; ``[M, N]`` -> ``[M, N]``."""
    n = x.shape[1]
    centred = x - x.mean(axis=1, keepdims=True)
    size = 1 << int(np.ceil(np.log2(2 * n)))  # zero padding: no circular wrap-around
    f = np.fft.rfft(centred, n=size, axis=1)
    return np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n


def ess(draws, rank: bool = True) -> float:
    """Effective sample size of ``draws`` ``[chains, draws]`` over all chains together.

    ``rank=True`` is the bulk ESS of Vehtari et al. (2021). Capped at M·N·log10(M·N) as Stan
    does (antithetic chains can exceed M·N)."""
    x = split_chains(_as_chains(draws, "ess"))
    if rank:
        x = rank_normalize(x)
    m, n = x.shape
    var_plus, w = _var_plus_and_w(x)
    if var_plus == 0.0:
        return float(m * n)
    gamma = _autocovariance(x).mean(axis=0)  # mean over chains of γ_{m,t}
    # As Stan: γ biased (÷N), W unbiased (÷(N-1)); ρ_0 is set to 1 exactly.
    rho = 1.0 - (w - gamma) / var_plus
    rho[0] = 1.0
    # Geyer's initial positive sequence: sums of adjacent pairs P_k = ρ_2k + ρ_2k+1 while > 0,
    # made monotone non-increasing (initial monotone sequence).
    n_pairs = n // 2
    pairs = rho[: 2 * n_pairs].reshape(n_pairs, 2).sum(axis=1)
    positive = np.nonzero(pairs <= 0)[0]
    k_end = positive[0] if positive.size else n_pairs
    pairs = np.minimum.accumulate(pairs[:k_end]) if k_end > 0 else pairs[:1]
    tau = -1.0 + 2.0 * pairs.sum()
    tau = max(tau, 1.0 / np.log10(m * n))  # Stan's cap on super-efficiency
    return float(m * n / tau)


def mcse_mean(draws) -> float:
    """Monte-Carlo standard error of the mean of ``draws`` (classic ESS, no rank transform)."""
    a = _as_chains(draws, "mcse_mean")
    return float(a.std(ddof=1) / np.sqrt(ess(a, rank=False)))
