"""Fitting the residual model of the max-error mode: the fitted weights give the symbols they were fitted
on a shorter code than the hand-set start (before the encoder's per-pass offsets), the model codes
losslessly and round-trips through the bundle file."""
from __future__ import annotations

import numpy as np

from edge_runtime import exact_dwt
from edge_runtime import residual as res
from edge_runtime.bundle import default_bundle_path, load_bundle
from edge_runtime.codec import PlaneCoder
from edge_runtime import context as ctx
from keras_codec.training.fit_residual import collect_samples, fit_model, initial_model


def _planes():
    rng = np.random.default_rng(0)
    r, c = np.mgrid[0:160, 0:176]
    a = 2000 + 800 * np.sin(r / 9.0) * np.cos(c / 6.0) + rng.normal(0, 6, r.shape)
    b = 100 + 60 * (np.hypot(r - 30, c - 40) < 20) + rng.normal(0, 2, r.shape)
    return [("a", np.round(a).astype(np.int64)), ("b", np.round(b).astype(np.int64))]


def _model_bits(model, groups) -> float:
    """Code length of the collected symbols under the model's own table indices (no offsets)."""
    return sum(model.tables.bits(sym, ctx.table_index(f, model.weights[p], model.coding.num_scales))
               for p, (fs, syms) in groups.items() for f, sym in zip(fs, syms))


def test_fitted_model_codes_its_samples_shorter_and_losslessly(tmp_path):
    b = load_bundle(default_bundle_path())
    p = b.manifest["codec"]
    coder = PlaneCoder(p, b.coding, {n: exact_dwt.ExactTransforms(n, p["mode"]) for n in p["transforms"]})
    planes = _planes()
    model0 = initial_model(p)
    groups = collect_samples(coder, planes, model0, bounds=(0, 2), progress=lambda *_: None)
    model = fit_model(groups, p)
    assert _model_bits(model, groups) < 0.97 * _model_bits(model0, groups)
    coder.residual = model
    x = planes[0][1]
    data = coder.encode_bounded(x, int(x.min()), int(x.max()), 0)
    np.testing.assert_array_equal(coder.decode_bounded(data, *x.shape, int(x.min()), int(x.max()), 0), x)
    np.savez(tmp_path / res.RESIDUAL_FILE, **model.to_arrays())
    with np.load(tmp_path / res.RESIDUAL_FILE) as z:
        back = res.ResidualModel.from_arrays(z)
    np.testing.assert_array_equal(back.weights, model.weights)
    assert all(np.array_equal(x, y) for x, y in zip(back.tables.freqs, model.tables.freqs))
