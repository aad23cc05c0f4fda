"""Maximum-likelihood fitting of the integer context model's weights.

For each (level, orientation, phase) group, log σ = θ·f is fitted to the symbols by
L-BFGS on the exact negative log-likelihood of a Laplacian through the deadzone
quantizer, then θ is mapped onto the integer table-index weights of
edge_runtime.context (index = (log σ − log σ_min)/δ, scaled by 2**SHIFT and rounded).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import tensorflow as tf
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


HIDDEN_SCALE = 256
"""Hidden activations are integers in units of 1/HIDDEN_SCALE (natural-log units of the scale)."""
MLP_STEPS = 400
MLP_SAMPLES = 100_000
MLP_MIN_SYMBOLS = 2000  # smaller groups (the coarsest levels) keep the linear model: a hidden layer overfits them


def fit_group_mlp(features: np.ndarray, symbols: np.ndarray, deadzone: float, theta0: np.ndarray, hidden: int,
                  seed: int = 0, steps: int = MLP_STEPS, max_samples: int = MLP_SAMPLES):
    """A hidden layer on top of the linear fit: log σ = θ·f + Σ_j c_j·relu(v_j·f).

    Maximum likelihood (the same exact deadzone-Laplace likelihood as fit_group), by Adam in
    TensorFlow, started from the linear θ0 and c = 0 (so the start is the linear model).
    `features` are in natural-log units (first column the constant 1). Returns (θ, V (H, F), c).
    """
    rng = np.random.default_rng(seed)
    if len(symbols) > max_samples:
        sel = rng.choice(len(symbols), max_samples, replace=False)
        features, symbols = features[sel], symbols[sel]
    f = tf.constant(features, tf.float32)
    k = tf.constant(np.abs(symbols), tf.float32)
    r = 0.5 - deadzone
    theta = tf.Variable(np.asarray(theta0, np.float32))
    v = tf.Variable(rng.normal(0.0, 0.3, (hidden, features.shape[1])).astype(np.float32))
    c = tf.Variable(np.zeros(hidden, np.float32))
    opt = tf.keras.optimizers.Adam(1e-2)

    def nll():
        logs = tf.clip_by_value(tf.linalg.matvec(f, theta) + tf.linalg.matvec(tf.nn.relu(f @ tf.transpose(v)), c),
                                -8.0, 12.0)
        u = tf.exp(-logs)
        n0 = -tf.math.log(tf.maximum(-tf.math.expm1(-(1.0 - r) * u), 1e-30))
        n1 = np.log(2.0) + (k - r) * u - tf.math.log(tf.maximum(-tf.math.expm1(-u), 1e-30))
        return tf.reduce_mean(tf.where(tf.equal(k, 0.0), n0, n1))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = nll()
        opt.apply_gradients(zip(tape.gradient(loss, [theta, v, c]), [theta, v, c]))
        return loss

    start = float(nll())
    for _ in range(steps):
        step()
    if not float(nll()) < start:  # never worse than the linear model it started from
        return np.asarray(theta0, np.float64), np.zeros((hidden, features.shape[1])), np.zeros(hidden)
    return theta.numpy().astype(np.float64), v.numpy().astype(np.float64), c.numpy().astype(np.float64)


def hidden_to_int(v: np.ndarray, c: np.ndarray, num_scales: int, scale_min: float, scale_max: float):
    """(V in code units (H, F), c) -> integer (hidden (H, F) without bias, hidden_bias (H), out (H)) of
    edge_runtime.context.ContextWeights.group_index."""
    grid = np.log(scale_grid(num_scales, scale_min, scale_max))
    delta = grid[1] - grid[0]
    a = np.round(v * HIDDEN_SCALE * (1 << ctx.SHIFT)).astype(np.int64)
    out = np.round(c / delta / HIDDEN_SCALE * (1 << ctx.SHIFT)).astype(np.int64)
    bias = a[:, 0].copy()
    a[:, 0] = 0
    return a, bias, out


def theta_to_int(theta: np.ndarray, num_scales: int, scale_min: float, scale_max: float) -> np.ndarray:
    grid = np.log(scale_grid(num_scales, scale_min, scale_max))
    delta = grid[1] - grid[0]
    w = theta / delta
    w[0] = (theta[0] - grid[0]) / delta
    return np.round(w * (1 << ctx.SHIFT)).astype(np.int64)


def fit_weights(samples, levels: int, num_scales: int, scale_min: float, scale_max: float,
                deadzone: float, init: ctx.ContextWeights | None = None, hidden: int = 0,
                progress=None) -> ctx.ContextWeights:
    """Fit from `samples`, an iterable of subband_coder.collect() outputs (one per plane/quality).

    With `hidden` > 0 every group also gets that many ReLU units (fit_group_mlp) on top of its linear fit.
    """
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
    shape = (levels, 3, 3, hidden)
    h_w, h_b, h_out = (np.zeros(shape + (ctx.NUM_FEATURES,), np.int64), np.zeros(shape, np.int64),
                       np.zeros(shape, np.int64))
    unit = 16.0 / np.log(2.0)  # magnitude codes per natural-log unit
    for (level, o, phase), (fs, ss) in sorted(groups.items()):
        f = np.concatenate(fs)
        s = np.concatenate(ss)
        if len(s) < 50:
            continue
        fs_scaled = f.astype(np.float64)
        fs_scaled[:, 1:] /= unit  # codes -> natural-log units
        theta = fit_group(fs_scaled, s, deadzone)
        if hidden and len(s) >= MLP_MIN_SYMBOLS:
            theta, v, c = fit_group_mlp(fs_scaled, s, deadzone, theta, hidden)
            v[:, 1:] /= unit
            h_w[level - 1, o, phase], h_b[level - 1, o, phase], h_out[level - 1, o, phase] = hidden_to_int(
                v, c, num_scales, scale_min, scale_max)
            if progress:
                progress(f"fit: group level {level} orientation {o} phase {phase}: {len(s)} symbols")
        theta[1:] /= unit
        detail[level - 1, o, phase] = theta_to_int(theta, num_scales, scale_min, scale_max)
    ll = default_ll_weights(num_scales, scale_min, scale_max)
    if hidden:
        return ctx.ContextWeights(detail=detail, ll=ll, hidden=h_w, hidden_bias=h_b, out=h_out)
    return ctx.ContextWeights(detail=detail, ll=ll)


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
