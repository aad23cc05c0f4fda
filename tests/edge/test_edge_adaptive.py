"""The adaptive residual stream (tables chosen per context bucket for the tile): exact round trips, the
stream flag, older fixed-table streams still decoding, fewer bytes where the image's noise differs from
the corpus, corrupt side information refused."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from edge_runtime import exact_dwt
from edge_runtime import residual as res
from edge_runtime.bundle import default_bundle_path, load_bundle
from edge_runtime.codec import PlaneCoder


@pytest.fixture(scope="module")
def shipped():
    b = load_bundle(default_bundle_path())
    p = b.manifest["codec"]
    transforms = {n: exact_dwt.ExactTransforms(n, p["mode"]) for n in p["transforms"]}
    return b, PlaneCoder(p, b.coding, transforms, b.residual, b.refine)


def _signal_dependent(rng, rows=128, cols=128, top=4000):
    """A smooth ramp whose noise grows with the signal (as quantum noise does in a radiograph)."""
    r, c = np.mgrid[0:rows, 0:cols]
    mean = top * (0.05 + 0.9 * (c / cols) * (0.6 + 0.4 * np.sin(r / 9.0)))
    return np.clip(np.round(mean + rng.normal(0, 1, mean.shape) * np.sqrt(mean) * 0.8), 0, top).astype(np.int64)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (3, 5), (17, 9), (64, 48)])
@pytest.mark.parametrize("d", [0, 1, 4])
def test_adaptive_residual_round_trip_any_shape(shipped, shape, d):
    b, _ = shipped
    rng = np.random.default_rng(shape[0] * 100 + shape[1] + d)
    base = rng.integers(0, 1000, shape)
    e = res.quantize(rng.integers(-300, 300, shape) * rng.integers(0, 2, shape), d)
    data = res.encode_residual_adaptive(e, base, d, b.residual)
    assert np.array_equal(res.decode_residual_adaptive(data, base, d, b.residual), e)


def test_large_residuals_round_trip_through_escapes(shipped):
    b, _ = shipped
    rng = np.random.default_rng(3)
    base = rng.integers(0, 65535, (40, 40))
    e = rng.integers(-65535, 65535, (40, 40))
    data = res.encode_residual_adaptive(e, base, 0, b.residual)
    assert np.array_equal(res.decode_residual_adaptive(data, base, 0, b.residual), e)


def test_intensity_classes_split_at_quantiles():
    base = np.arange(100).reshape(10, 10)
    for count in res.ADAPTIVE_CLASSES:
        cls = res.intensity_classes(base, count)
        sizes = np.bincount(cls, minlength=count)
        assert len(sizes) == count and sizes.max() - sizes.min() <= 1  # equal shares of the positions
        assert np.all(np.diff(cls) >= 0)  # in the order of the values
    assert len(np.unique(res.intensity_classes(np.full((4, 4), 7), 8))) == 1  # one value, one class


def test_intensity_class_thresholds_from_the_histogram_equal_those_from_sorting():
    rng = np.random.default_rng(11)
    for _ in range(50):
        base = rng.integers(-3, int(rng.integers(1, 70000)), int(rng.integers(1, 400))) * int(rng.integers(1, 3))
        for count in res.ADAPTIVE_CLASSES:
            assert np.array_equal(res.intensity_classes(base, count), res.intensity_classes(base, count, np.sort(base)))


@pytest.mark.parametrize("d", [0, 2])
def test_tile_stream_flags_the_adaptive_residual_and_old_streams_still_decode(shipped, d):
    b, coder = shipped
    x = _signal_dependent(np.random.default_rng(d))
    lo, hi = int(x.min()), int(x.max())
    based = PlaneCoder(coder.p, coder.coding, coder.transforms, coder.residual, coder.refine, direct=False)
    new = based.encode_bounded(x, lo, hi, d, quality=14)
    old_coder = PlaneCoder(coder.p, coder.coding, coder.transforms, coder.residual, coder.refine, adaptive=False,
                           direct=False)
    old = old_coder.encode_bounded(x, lo, hi, d, quality=14)
    assert new[0] == 14 | PlaneCoder.ADAPTIVE | PlaneCoder.SHAPES and old[0] == 14
    assert struct.unpack_from("<II", new, 1) == struct.unpack_from("<II", old, 1)  # same divisor and base
    for data in (new, old):
        for decoder in (coder, old_coder):  # the flag, not the decoder's setting, picks the residual stream
            y = decoder.decode_bounded(data, *x.shape, lo, hi, d)
            assert np.abs(y - x).max() <= d
    # noise that grows with the signal is what the fixed tables cannot follow: the adaptive stream is smaller
    assert len(new) < 0.97 * len(old)


def test_corrupt_bucket_tables_are_refused(shipped):
    b, _ = shipped
    rng = np.random.default_rng(5)
    base = rng.integers(0, 500, (32, 32))
    e = rng.integers(-20, 20, (32, 32))
    data = bytearray(res.encode_residual_adaptive(e, base, 0, b.residual))
    noticed = 0
    for i in range(0, min(len(data), 64), 4):
        bad = bytearray(data)
        bad[i] ^= 0xFF
        try:  # anything but ValueError (an index error, a panic in the range coder) fails the test
            noticed += not np.array_equal(res.decode_residual_adaptive(bytes(bad), base, 0, b.residual), e)
        except ValueError:
            noticed += 1
    assert noticed > 0


def test_shape_tables_are_integer_twins_of_the_model_tables(shipped):
    b, _ = shipped
    t = b.residual.tables
    twins = res.shape_tables(t)
    assert twins.num_tables == 2 * t.num_tables
    for k in range(t.num_tables):
        assert np.array_equal(twins.freqs[k], t.freqs[k])
        f = twins.freqs[t.num_tables + k]
        if t.tails[k] <= res.SHAPE_MAX_TAIL:
            assert twins.tails[t.num_tables + k] == 2 * t.tails[k]
            mid = int(twins.tails[t.num_tables + k])
            v = f[:2 * mid + 1]
            assert np.all(np.abs(v - v[::-1]) <= 2 + v // 1000)  # symmetric up to the rounding of its source
            assert f[mid] == f[:-1].max()
        else:
            assert np.array_equal(f, t.freqs[k])


@pytest.mark.parametrize("d", [0, 3])
def test_lighter_tailed_tables_round_trip_and_pay_on_gaussian_noise(shipped, d):
    b, _ = shipped
    rng = np.random.default_rng(7 + d)
    base = rng.integers(0, 3000, (128, 128))
    e = res.quantize(np.round(rng.normal(0, 12, base.shape)).astype(np.int64), d)
    plain = res.encode_residual_adaptive(e, base, d, b.residual)
    twins = res.encode_residual_adaptive(e, base, d, b.residual, shapes=True)
    assert np.array_equal(res.decode_residual_adaptive(twins, base, d, b.residual, shapes=True), e)
    assert len(twins) < 0.995 * len(plain)  # Gaussian noise: lighter tails than a Laplacian
