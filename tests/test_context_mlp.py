"""The context model's hidden layer: fitted by maximum likelihood, never worse than the linear fit
it starts from, and mapped to integers that give the float model's table index."""
from __future__ import annotations

import numpy as np

from edge_runtime import context as ctx
from edge_runtime.entropy import scale_grid
from keras_codec.training.context_fit import fit_group, fit_group_mlp, hidden_to_int, theta_to_int

K, SMIN, SMAX = 64, 0.05, 512.0


def _data(n=6000, seed=0):
    """Symbols whose log-scale is a non-linear (V-shaped) function of the first feature."""
    rng = np.random.default_rng(seed)
    f = np.concatenate([np.ones((n, 1)), rng.uniform(0, 4, (n, ctx.NUM_FEATURES - 1))], axis=1)
    log_scale = -1.0 + 1.5 * np.abs(f[:, 1] - 2.0)
    x = rng.laplace(0, np.exp(log_scale))
    sym = (np.sign(x) * np.floor(np.abs(x) + 0.3)).astype(np.int64)
    return f, sym


def _nll(f, sym, theta, v=None, c=None):
    logs = f @ theta + (np.maximum(f @ v.T, 0) @ c if v is not None else 0)
    u = np.exp(-np.clip(logs, -8, 12))
    k = np.abs(sym)
    return np.where(k == 0, -np.log(-np.expm1(-0.7 * u)),
                    np.log(2) + (k - 0.3) * u - np.log(-np.expm1(-u))).mean()


def test_hidden_layer_beats_the_linear_fit_on_nonlinear_contexts():
    f, sym = _data()
    theta = fit_group(f, sym, 0.2)
    t2, v, c = fit_group_mlp(f, sym, 0.2, theta, hidden=4, steps=300)
    ft, st = _data(seed=1)
    assert _nll(ft, st, t2, v, c) < _nll(ft, st, theta) - 0.05


def test_hidden_layer_falls_back_to_linear_when_it_cannot_help():
    f, sym = _data()
    theta = fit_group(f, sym, 0.2)
    t2, v, c = fit_group_mlp(f, sym, 0.2, theta, hidden=2, steps=0)
    assert np.array_equal(t2, theta) and not v.any() and not c.any()


def test_integer_index_follows_the_float_model():
    f, sym = _data(n=3000)
    theta = fit_group(f, sym, 0.2)
    t2, v, c = fit_group_mlp(f, sym, 0.2, theta, hidden=4, steps=200)
    codes = np.round(f * np.array([1.0] + [16.0 / np.log(2.0)] * 6)).astype(np.int64)  # features as codes
    unit = 16.0 / np.log(2.0)
    t_codes, v_codes = t2.copy(), v.copy()
    t_codes[1:] /= unit
    v_codes[:, 1:] /= unit
    a, b, out = hidden_to_int(v_codes, c, K, SMIN, SMAX)
    w = ctx.ContextWeights(np.tile(theta_to_int(t_codes, K, SMIN, SMAX), (1, 3, 3, 1)), np.zeros((3, 2), np.int64),
                           hidden=a[None, None, None].repeat(3, 1).repeat(3, 2), hidden_bias=np.tile(b, (1, 3, 3, 1)),
                           out=np.tile(out, (1, 3, 3, 1)))
    got = w.group_index(codes, 1, 0, 0, K)
    grid = np.log(scale_grid(K, SMIN, SMAX))
    fc = codes.astype(np.float64)
    logs = fc @ t_codes + np.maximum(fc @ v_codes.T, 0) @ c
    want = np.clip(np.round((logs - grid[0]) / (grid[1] - grid[0])), 0, K - 1)
    assert np.abs(got - want).max() <= 1 and (got == want).mean() > 0.95
