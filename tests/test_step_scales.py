"""Per-level quantizer step multipliers (codec param "level_step_scale") and their fitting script."""
import json

import numpy as np
import pytest

from edge_runtime.bundle import default_bundle_path, load_bundle
from edge_runtime.codec import (PlaneCoder, dyadic_scale, level_step_scales, levels_for, nominal_psnr,
                                quantize_bands)
from edge_runtime.runtime import load_codec
from tests.edge.conftest import BUNDLE

NEUTRAL_SCALES = [1.0] * 8
SCALES = [1.25, 0.75, 0.9, 1.1, 1.2]


@pytest.fixture(scope="module")
def codec():
    return load_codec(BUNDLE, num_threads=1)


def _plane(shape=(64, 64), seed=0, bits=12):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    v = np.sin(x / 7.0) * np.cos(y / 11.0) + 0.4 * ((y - 30) ** 2 + (x - 25) ** 2 < 200) + 0.03 * rng.normal(size=shape)
    top = (1 << bits) - 1
    return np.clip(np.round((v + 1.5) / 3.0 * top), 0, top).astype(np.int64)


def _coder_with(codec, scales):
    bundle, base = codec
    params = {k: v for k, v in base.p.items() if k != "level_step_scale"}
    if scales is not None:
        params["level_step_scale"] = scales
    return PlaneCoder(params, bundle.coding, base.transforms, bundle.residual)


def _psnr(a, b, rng):
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 10 * np.log10(rng * rng / mse)


def test_scales_follow_level_numbers_with_ll_first():
    p = {"level_step_scale": [2.0, 0.5, 0.75, 1.5, 1.25]}
    # band order [LL, level L, ..., level 1]; entry i is level i (finest = 1), entry 0 the LL band
    assert level_step_scales(p, 3) == [2.0, 1.5, 0.75, 0.5]
    assert level_step_scales(p, 1) == [2.0, 0.5]
    assert level_step_scales(p, 6) == [2.0, 1.0, 1.0, 1.25, 1.5, 0.75, 0.5]  # missing entries are 1.0
    assert level_step_scales({}, 4) == [1.0] * 5
    assert level_step_scales({"level_step_scale": [0.9]}, 2) == [dyadic_scale(0.9), 1.0, 1.0]


def test_dyadic_scale_is_exact_and_idempotent():
    for m in (0.9, 1.1, 0.8 * 1.25 * 0.9, 1.0, 3.7):
        d = dyadic_scale(m)
        assert d * 2 ** 16 == int(d * 2 ** 16) and abs(d - m) <= 2 ** -17
        assert dyadic_scale(d) == d and json.loads(json.dumps(d)) == d
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            dyadic_scale(bad)
    with pytest.raises(ValueError, match="list"):
        level_step_scales({"level_step_scale": 1.1}, 3)


def test_quantize_bands_neutral_scales_are_identical():
    rng = np.random.default_rng(1)
    bands = [rng.normal(size=(4, 4)).astype(np.float32)] + [tuple(rng.normal(size=(s, s)).astype(np.float32)
                                                                  for _ in range(3)) for s in (4, 8)]
    a_scaled, a_q = quantize_bands(bands, 0.013, 0.2)
    b_scaled, b_q = quantize_bands(bands, 0.013, 0.2, [1.0, 1.0, 1.0])
    for a, b in zip([a_scaled[0], *sum(map(list, a_scaled[1:]), [])], [b_scaled[0], *sum(map(list, b_scaled[1:]), [])]):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    c_scaled, _ = quantize_bands(bands, 0.013, 0.2, [2.0, 1.0, 0.5])
    assert np.array_equal(c_scaled[0], bands[0] / 0.026) and np.array_equal(c_scaled[2][1], bands[2][1] / 0.0065)
    with pytest.raises(ValueError, match="multipliers"):
        quantize_bands(bands, 0.013, 0.2, [1.0, 1.0])


@pytest.mark.parametrize("shape", [(40, 56), (32, 48), (128, 136)])  # the test bundle has L2 and L4 graphs
def test_bundle_without_key_gives_identical_bytes_to_all_ones(codec, shape):
    x = _plane(shape) / 4095.0
    none, ones = _coder_with(codec, None), _coder_with(codec, NEUTRAL_SCALES)
    for q in (6, 14, 22):
        a, b = none.encode(x, q), ones.encode(x, q)
        assert a == b
        assert np.array_equal(none.decode(a, *shape, q), ones.decode(a, *shape, q))
        assert np.array_equal(none.decode_exact(a, *shape, q), ones.decode_exact(a, *shape, q))


def test_non_neutral_scales_round_trip(codec):
    plane = _plane((128, 128), seed=3)
    x = plane / 4095.0
    scaled, neutral = _coder_with(codec, SCALES), _coder_with(codec, None)
    for q in (10, 16):
        data = scaled.encode(x, q)
        assert data != neutral.encode(x, q)
        y = np.clip(np.round(scaled.decode(data, 128, 128, q) * 4095.0), 0, 4095)
        assert _psnr(plane, y, 4095) > nominal_psnr(q) - 6
        ye = np.clip(np.round(scaled.decode_exact(data, 128, 128, q) * 4095.0), 0, 4095)
        assert _psnr(plane, ye, 4095) > nominal_psnr(q) - 6
        # the decoder really applies the multipliers: the neutral decoder reads the same symbols into another image
        assert not np.array_equal(neutral.decode_exact(data, 128, 128, q), scaled.decode_exact(data, 128, 128, q))


def test_band_steps_are_exact_products(codec):
    """The decoder's band values are q · (step · m): the same doubles on every CPU (IEEE products)."""
    coder = _coder_with(codec, SCALES)
    x = _plane((32, 32), seed=5) / 4095.0
    data = coder.encode(x, 12)
    _name, levels, bands, step = coder._decode_bands(data, 32, 32, 12)
    m = level_step_scales(coder.p, levels)
    ll_q = np.round(bands[0] / np.float32(step * m[0]))
    assert np.array_equal(bands[0], ll_q.astype(np.float32) * (step * m[0]))


def test_error_bounded_mode_with_scales():
    """The error-bounded mode decodes its base through the exact path, which uses the same band steps."""
    bundle = load_bundle(default_bundle_path())
    if bundle.residual is None:
        pytest.skip("the shipped bundle has no residual model")
    from edge_runtime.tflite_runner import transforms_for_bundle

    params = {**bundle.manifest["codec"], "level_step_scale": SCALES}
    coder = PlaneCoder(params, bundle.coding, transforms_for_bundle(bundle, num_threads=1), bundle.residual)
    plane = _plane((48, 40), seed=9)
    for d in (0, 3):
        data = coder.encode_bounded(plane, 0, 4095, d, quality=12)
        out = coder.decode_bounded(data, 48, 40, 0, 4095, d)
        assert np.max(np.abs(out - plane)) <= d


def test_fit_step_scales_on_tiny_planes(codec, tmp_path):
    from keras_codec.training.fit_steps import fit_step_scales, write_bundle

    coder = _coder_with(codec, None)
    planes = [(f"synthetic{i}", _plane((32, 32), seed=i, bits=10), 1023) for i in range(2)]
    log = []
    res = fit_step_scales(coder, planes, qualities=(14, 17, 20, 22), factors=(0.8, 1.25), sweeps=1,
                          progress=log.append)
    depth = max(levels_for(32, 32, int(coder.p["levels"])), 1)
    s = res["level_step_scale"]
    assert len(s) == depth + 1 and all(v > 0 and dyadic_scale(v) == v for v in s)
    assert res["objective"] <= 0.0 and log
    assert "level_step_scale" not in coder.p  # restored
    with pytest.raises(ValueError, match="aggregate"):
        fit_step_scales(coder, planes, aggregate="max")

    model_id = write_bundle(BUNDLE, tmp_path / "b2", s, {"level_step_scale": s, "split": "train"})
    b2 = load_bundle(tmp_path / "b2")
    assert b2.manifest["codec"]["level_step_scale"] == s and b2.model_id == model_id
    assert b2.manifest["steps"]["split"] == "train"
    with pytest.raises(FileExistsError):
        write_bundle(BUNDLE, tmp_path / "b2", s, {})
