"""Tests for keras_codec.evaluation.metrics: hand values, scikit-image references, an independent MS-SSIM."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import convolve2d
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from keras_codec.evaluation import metrics as m


def smooth_image(rows=96, cols=80, bits=12, seed=0):
    y, x = np.mgrid[0:rows, 0:cols]
    base = 0.5 + 0.3 * np.sin(x / 9.0) * np.cos(y / 13.0) + 0.15 * (x + y) / (rows + cols)
    noise = np.random.default_rng(seed).normal(0, 0.01, base.shape)
    return np.clip((base + noise) * (2**bits - 1), 0, 2**bits - 1).astype(np.uint16)


def noisy(image, sigma, seed=1, hi=4095):
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, hi).round().astype(image.dtype)


def sk_ssim(a, b, r, **kw):
    return structural_similarity(
        a.astype(float), b.astype(float), data_range=r, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, **kw,
    )


# An independent SSIM: an explicit 11x11 Gaussian kernel and 'valid' convolution
# (equal to filtering with reflect padding and cropping 5 pixels per border).
def _kernel():
    t = np.arange(-5, 6, dtype=float)
    g = np.exp(-(t**2) / (2 * 1.5**2))
    k = np.outer(g, g)
    return k / k.sum()


def ref_ssim_terms(x, y, r):
    k = _kernel()

    def f(z):
        return convolve2d(z, k, mode="valid")

    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    cs = (2 * cxy + c2) / (vx + vy + c2)
    return np.mean(lum * cs), np.mean(cs)


def ref_ms_ssim(x, y, r, scales):
    w = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333][:scales])
    w = w / w.sum()
    x, y = x.astype(float), y.astype(float)
    value = 1.0
    for j in range(scales):
        s, cs = ref_ssim_terms(x, y, r)
        value *= (s if j == scales - 1 else cs) ** w[j]
        h, v = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
        x = x[:h, :v].reshape(h // 2, 2, v // 2, 2).mean(axis=(1, 3))
        y = y[:h, :v].reshape(h // 2, 2, v // 2, 2).mean(axis=(1, 3))
    return value


def test_psnr_hand_value():
    a = np.array([[0, 10], [20, 30]], dtype=np.uint16)
    b = np.array([[1, 9], [22, 30]], dtype=np.uint16)
    assert m.dynamic_range(a) == 30.0
    assert m.psnr(a, b) == pytest.approx(10 * math.log10(900 / 1.5), abs=1e-12)
    assert m.psnr_bitdepth(a, b, 12) == pytest.approx(10 * math.log10(4095**2 / 1.5), abs=1e-12)
    assert m.max_abs_error(a, b) == 2 and isinstance(m.max_abs_error(a, b), int)


def test_psnr_identical_is_inf_and_constant_range_is_one():
    a = np.full((4, 4), 7, dtype=np.int16)
    assert m.psnr(a, a) == math.inf
    assert m.dynamic_range(a) == 1.0
    b = a.copy()
    b[0, 0] = 8
    assert m.psnr(a, b) == pytest.approx(10 * math.log10(16.0))


def test_psnr_signed_uses_float64_not_wrapping_ints():
    a = np.array([[-32768, 32767]], dtype=np.int16)
    b = np.array([[32767, -32768]], dtype=np.int16)
    assert m.max_abs_error(a, b) == 65535
    assert m.psnr(a, b) == pytest.approx(0.0, abs=1e-12)


def test_psnr_matches_scikit_image():
    a = smooth_image()
    b = noisy(a, 20)
    r = m.dynamic_range(a)
    assert m.psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=r), rel=1e-12)


def _edge_pairs():
    rng = np.random.default_rng(5)
    u16 = rng.integers(0, 65536, (24, 20), dtype=np.uint16)
    u16_dec = np.clip(u16.astype(np.int64) + rng.integers(-300, 301, u16.shape), 0, 65535).astype(np.uint16)
    s16 = rng.integers(-2048, 2048, (16, 18, 3)).astype(np.int16)
    s16_dec = (s16 + rng.integers(-3, 4, s16.shape)).astype(np.int16)
    ct = smooth_image(40, 36)[None, :, :, None]
    constant = np.full((8, 8), 7, dtype=np.uint16)
    return {
        "16-bit": (u16, u16_dec),
        "signed RGB": (s16, s16_dec),
        "12-bit frame": (ct, noisy(ct, 6)),
        "identical": (ct, ct.copy()),
        "constant original": (constant, constant + np.eye(8, dtype=np.uint16)),
    }


@pytest.mark.parametrize("case", list(_edge_pairs()))
def test_psnr_agrees_with_the_edge_runtimes_on_stored_integers(case):
    """The edge keeps its own PSNR (it may not import keras_codec): same figure on integer images."""
    from edge_runtime.runtime import psnr as edge_psnr

    a, b = _edge_pairs()[case]
    ours, edge = m.psnr(a, b), edge_psnr(a, b)
    if math.isinf(ours):
        assert edge == math.inf
    else:
        assert edge == pytest.approx(ours, rel=1e-12)


def test_psnr_differs_from_the_edge_runtimes_only_below_a_unit_range():
    """On a float original with 0 < max - min < 1 (never a stored image) the edge floors R at 1, metrics does not."""
    from edge_runtime.runtime import psnr as edge_psnr

    a = np.array([[0.0, 0.5]])
    b = np.array([[0.1, 0.5]])
    assert m.psnr(a, b) == pytest.approx(10 * math.log10(0.25 / 0.005))
    assert edge_psnr(a, b) == pytest.approx(10 * math.log10(1.0 / 0.005))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        m.psnr(np.zeros((4, 4)), np.zeros((4, 5)))


def test_ssim_matches_scikit_image():
    a = smooth_image()
    b = noisy(a, 40)
    r = m.dynamic_range(a)
    assert m.ssim(a, b) == pytest.approx(sk_ssim(a, b, r), abs=1e-12)
    assert m.ssim(a, a) == pytest.approx(1.0)


def test_ssim_is_mean_over_planes_of_multiframe_multisample_images():
    a = np.stack([smooth_image(seed=s) for s in range(6)]).reshape(2, 3, 96, 80).transpose(0, 2, 3, 1)
    b = noisy(a, 30)
    r = m.dynamic_range(a)
    expected = np.mean([sk_ssim(a[f, :, :, s], b[f, :, :, s], r) for f in range(2) for s in range(3)])
    assert m.ssim(a, b) == pytest.approx(expected, abs=1e-12)
    rgb, r0 = a[0], m.dynamic_range(a[0])
    expected = np.mean([sk_ssim(rgb[..., s], b[0, ..., s], r0) for s in range(3)])
    assert m.ssim(rgb, b[0]) == pytest.approx(expected, abs=1e-12)


def test_ssim_small_images_use_a_smaller_window():
    a = smooth_image(5, 8)
    b = noisy(a, 40)
    assert m.ssim(a, b) == pytest.approx(sk_ssim(a, b, m.dynamic_range(a), win_size=5), abs=1e-12)
    assert 0 < m.ms_ssim(a, b) <= 1


def test_internal_ssim_terms_match_scikit_image_and_independent_reference():
    a = smooth_image(64, 72)
    b = noisy(a, 50)
    r = m.dynamic_range(a)
    s, cs = m._ssim_terms(a.astype(float), b.astype(float), r)
    assert s == pytest.approx(sk_ssim(a, b, r), abs=1e-12)
    rs, rcs = ref_ssim_terms(a.astype(float), b.astype(float), r)
    assert (s, cs) == pytest.approx((rs, rcs), abs=1e-10)


@pytest.mark.parametrize("shape, scales", [((256, 200), 5), ((128, 128), 4), ((40, 30), 2), ((21, 64), 1)])
def test_ms_ssim_matches_independent_computation(shape, scales):
    a = smooth_image(*shape)
    b = noisy(a, 60)
    assert m.ms_ssim_scales(shape) == scales
    r = m.dynamic_range(a)
    assert m.ms_ssim(a, b) == pytest.approx(ref_ms_ssim(a, b, r, scales), abs=1e-10)


def test_ms_ssim_is_one_on_identical_and_decreases_with_noise():
    a = smooth_image(192, 192)
    assert m.ms_ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    values = [m.ms_ssim(a, noisy(a, s)) for s in (5, 50, 400)]
    assert all(0 < v <= 1 for v in values)
    assert values[0] > values[1] > values[2]


def test_bpp_cr_reduction_hand_values():
    assert m.bpp(32768, 512 * 512) == 1.0
    cr = m.compression_ratio(32768, 512, 512, bits_allocated=16)
    assert cr == 16.0
    assert m.reduction(cr) == 0.9375
    assert m.compression_ratio(1000, 10, 10, frames=2, samples=3, bits_allocated=8) == 0.6


def test_evaluate_keys_and_values():
    a = smooth_image(64, 64)
    b = noisy(a, 10)
    row = m.evaluate(a, b, 2048, bits_stored=12, bits_allocated=16)
    assert set(row) == {"bpp", "psnr", "psnr_bitdepth", "ssim", "ms_ssim", "max_abs_err", "cr", "reduction"}
    assert row["bpp"] == 4.0 and row["cr"] == 4.0 and row["reduction"] == 0.75
    assert row["psnr"] == m.psnr(a, b) and row["psnr_bitdepth"] == m.psnr_bitdepth(a, b, 12)


RATES = [0.2, 0.4, 0.8, 1.6, 3.2]
PSNRS = [38.0, 42.0, 46.5, 51.0, 56.0]


def test_bd_rate_identical_curves_is_zero():
    assert m.bd_rate(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-12)
    assert m.bd_psnr(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-12)


def test_bd_rate_half_rate_is_minus_fifty_percent():
    half = [r / 2 for r in RATES]
    assert m.bd_rate(RATES, PSNRS, half, PSNRS) == pytest.approx(-50.0, abs=1e-6)
    assert m.bd_rate(half, PSNRS, RATES, PSNRS) == pytest.approx(100.0, abs=1e-6)


def test_bd_rate_sorts_dedupes_and_drops_lossless_points():
    rates = RATES[::-1] + [RATES[2] * 1.5, 9.0]
    psnrs = PSNRS[::-1] + [PSNRS[2], math.inf]
    assert m.bd_rate(RATES, PSNRS, rates, psnrs) == pytest.approx(0.0, abs=1e-12)


def test_bd_rate_nan_when_no_overlap_or_too_few_points():
    assert math.isnan(m.bd_rate([0.1, 0.2], [30.0, 35.0], [1.0, 2.0], [45.0, 50.0]))
    assert math.isnan(m.bd_rate([0.1, 0.2], [30.0, 38.0], [0.1, 0.2], [30.0, 38.0]))  # below 40 dB
    assert math.isnan(m.bd_rate([0.5], [45.0], RATES, PSNRS))
    assert math.isnan(m.bd_psnr([0.5], [45.0], RATES, PSNRS))


def test_bd_psnr_constant_shift():
    assert m.bd_psnr(RATES, PSNRS, RATES, [p + 1.25 for p in PSNRS]) == pytest.approx(1.25, abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.floats(0.05, 20.0))
def test_bd_rate_of_a_scaled_curve_is_the_scale(k):
    scaled = [r * k for r in RATES]
    assert m.bd_rate(RATES, PSNRS, scaled, PSNRS) == pytest.approx((k - 1) * 100, rel=1e-9, abs=1e-9)
