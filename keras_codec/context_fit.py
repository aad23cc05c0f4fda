"""Maximum-likelihood fitting of the integer context model's weights.

For each (level, orientation, phase) group, log σ = θ·f is fitted to the symbols by
L-BFGS on the exact negative log-likelihood of a Laplacian through the deadzone
quantizer, then θ is mapped onto the integer table-index weights of
edge_runtime.context (index = (log σ − log σ_min)/δ, scaled by 2**SHIFT and rounded).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.optimize import minimize

from edge_runtime import context as ctx
from edge_runtime.entropy import scale_grid


def _nll_and_grad(theta, f, k, r, weights=None):
    logs = np.clip(f @ theta, -8.0, 12.0)
    u = np.exp(-logs)
    zero = k == 0
    nll = np.empty_like(u)
    d_du = np.empty_like(u)
    a = (1.0 - r) * u[zero]
    e0 = -np.expm1(-a)
    nll[zero] = -np.log(np.maximum(e0, 1e-300))
    d_du[zero] = -(1.0 - r) * np.exp(-a) / np.maximum(e0, 1e-300)
    uk = u[~zero]
    kk = k[~zero]
    e1 = -np.expm1(-uk)
    nll[~zero] = np.log(2.0) + (kk - r) * uk - np.log(np.maximum(e1, 1e-300))
    d_du[~zero] = (kk - r) - np.exp(-uk) / np.maximum(e1, 1e-300)
    d_dlogs = -u * d_du
    n = len(k)
    return nll.sum() / n, (f.T @ d_dlogs) / n


def fit_group(features: np.ndarray, symbols: np.ndarray, deadzone: float, max_samples=200_000, seed=0):
    """θ (float, per feature) maximising the likelihood of |symbols| given features."""
    rng = np.random.default_rng(seed)
    if len(symbols) > max_samples:
        sel = rng.choice(len(symbols), max_samples, replace=False)
        features, symbols = features[sel], symbols[sel]
    f = features.astype(np.float64)
    k = np.abs(symbols).astype(np.float64)
    r = 0.5 - deadzone
    theta0 = np.zeros(f.shape[1])
    theta0[0] = np.log(max(k.mean(), 0.05))
    res = minimize(_nll_and_grad, theta0, args=(f, k, r), jac=True, method="L-BFGS-B",
                   options={"maxiter": 200})
    return res.x


def theta_to_int(theta: np.ndarray, num_scales: int, scale_min: float, scale_max: float) -> np.ndarray:
    grid = np.log(scale_grid(num_scales, scale_min, scale_max))
    delta = grid[1] - grid[0]
    w = theta / delta
    w[0] = (theta[0] - grid[0]) / delta
    return np.round(w * (1 << ctx.SHIFT)).astype(np.int64)


def fit_weights(samples, levels: int, num_scales: int, scale_min: float, scale_max: float,
                deadzone: float, init: ctx.ContextWeights | None = None) -> ctx.ContextWeights:
    """Fit from `samples`, an iterable of subband_coder.collect() outputs (one per plane/quality)."""
    groups = defaultdict(lambda: ([], []))
    for rows in samples:
        for key, f, sym, _idx in rows:
            if key[0] == "LL":
                continue
            level, o, phase = key
            g = groups[(min(level, levels), o, phase)]
            g[0].append(f)
            g[1].append(sym)
    detail = np.zeros((levels, 3, 3, ctx.NUM_FEATURES), np.int64) if init is None else init.detail.copy()
    for (level, o, phase), (fs, ss) in groups.items():
        f = np.concatenate(fs)
        s = np.concatenate(ss)
        if len(s) < 50:
            continue
        fs_scaled = f.astype(np.float64)
        fs_scaled[:, 1:] /= 16.0 / np.log(2.0)  # codes -> natural-log units
        theta = fit_group(fs_scaled, s, deadzone)
        theta[1:] /= 16.0 / np.log(2.0)
        detail[level - 1, o, phase] = theta_to_int(theta, num_scales, scale_min, scale_max)
    return ctx.ContextWeights(detail=detail, ll=default_ll_weights(num_scales, scale_min, scale_max))


def default_ll_weights(num_scales, scale_min, scale_max) -> np.ndarray:
    """LL: phase 0 wide (σ ≈ 64 steps); later phases σ ≈ spread/2 of the neighbours."""
    grid = np.log(scale_grid(num_scales, scale_min, scale_max))
    delta = grid[1] - grid[0]
    out = np.zeros((3, 2), np.int64)
    out[0] = [round((np.log(64.0) - grid[0]) / delta * (1 << ctx.SHIFT)), 0]
    for p in (1, 2):
        # log σ = log(spread) - log 2 ≈ (code/16)·ln2 - ln2
        b = (np.log(0.5) - grid[0]) / delta
        a = np.log(2.0) / 16.0 / delta
        out[p] = [round(b * (1 << ctx.SHIFT)), round(a * (1 << ctx.SHIFT))]
    return out
