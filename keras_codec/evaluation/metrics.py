"""Rate and distortion metrics, computed one way for the whole project.

This module is DESIGN.md's evaluation protocol in code. Pixels are compared in
their stored integer form as float64. Arrays may be 2-D ``(rows, cols)``,
3-D ``(rows, cols, samples)`` or 4-D ``(frames, rows, cols, samples)``; a 3-D
array is always read as ``(rows, cols, samples)``.

- PSNR uses R = max - min of the original (its dynamic range); ``psnr_bitdepth``
  uses R = 2**BitsStored - 1 and is reported beside it, labelled.
- SSIM is scikit-image's ``structural_similarity`` with a Gaussian window
  (sigma 1.5, 11 taps), ``use_sample_covariance=False`` and ``data_range=R``.
  Multi-frame or multi-sample arrays give the mean over their 2-D planes.
- MS-SSIM follows Wang, Simoncelli and Bovik (2003) with the same window.
- bpp counts every byte of the pixel bitstream over rows x cols x frames x
  samples; CR is the stored size at BitsAllocated over the compressed size.
- BD-rate is Bjontegaard's delta rate with piecewise cubic (PCHIP)
  interpolation over the overlapping PSNR range within 40-55 dB.

The bottom layer of :mod:`keras_codec.evaluation` (numpy only at import), and the one PSNR of
the workstation side; the edge runtime keeps its own (``edge_runtime.runtime.psnr``, the same
figure on stored integers, since the edge may not import this package).

The names returned by :func:`evaluate` (``bpp``, ``psnr``, ``psnr_bitdepth``,
``ssim``, ``ms_ssim``, ``max_abs_err``, ``cr``, ``reduction``) are the names
logged in training, evaluation and benchmarks.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "MS_SSIM_WEIGHTS",
    "SSIM_SIGMA",
    "bd_psnr",
    "bd_rate",
    "bpp",
    "compression_ratio",
    "dynamic_range",
    "evaluate",
    "max_abs_error",
    "ms_ssim",
    "planes",
    "psnr",
    "psnr_bitdepth",
    "reduction",
    "ssim",
]

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # scikit-image's value for gaussian_weights=True
SSIM_WIN = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1  # 11
SSIM_K1 = 0.01
SSIM_K2 = 0.03
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _pair(original, decoded):
    a = np.asarray(original)
    b = np.asarray(decoded)
    if a.shape != b.shape:
        raise ValueError(
            f"original and decoded differ in shape: {a.shape} vs {b.shape}; "
            "compare the decoded image after cropping it to the original size"
        )
    if a.size == 0:
        raise ValueError("cannot measure an empty image")
    return a.astype(np.float64), b.astype(np.float64)


def planes(array):
    """Return the 2-D planes of a (rows, cols[, samples]) or (frames, rows, cols, samples) array."""
    a = np.asarray(array)
    if a.ndim == 2:
        return [a]
    if a.ndim == 3:
        return [a[:, :, s] for s in range(a.shape[2])]
    if a.ndim == 4:
        return [a[f, :, :, s] for f in range(a.shape[0]) for s in range(a.shape[3])]
    raise ValueError(
        f"expected (rows, cols), (rows, cols, samples) or (frames, rows, cols, samples), got shape {a.shape}"
    )


def dynamic_range(original):
    """Return max - min of the original image as a float.

    A constant image has no range; 1 is returned instead so that PSNR stays
    defined (it then equals 10*log10(1/MSE)).
    """
    a = np.asarray(original)
    if a.size == 0:
        raise ValueError("cannot measure an empty image")
    r = float(a.max()) - float(a.min())
    return r if r > 0 else 1.0


def _mse(a, b):
    return float(np.mean((a - b) ** 2))


def psnr(original, decoded, data_range=None):
    """PSNR in dB with R = dynamic range of the original unless ``data_range`` is given; inf when exact."""
    a, b = _pair(original, decoded)
    r = dynamic_range(original) if data_range is None else float(data_range)
    mse = _mse(a, b)
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(r * r / mse)


def psnr_bitdepth(original, decoded, bits_stored):
    """PSNR in dB with R = 2**bits_stored - 1 (the customary, bit-depth-based figure)."""
    if int(bits_stored) < 1:
        raise ValueError(f"bits_stored must be >= 1, got {bits_stored}")
    return psnr(original, decoded, data_range=2.0 ** int(bits_stored) - 1.0)


def max_abs_error(original, decoded):
    """Largest absolute pixel difference, as an int."""
    a = np.asarray(original)
    b = np.asarray(decoded)
    if a.shape != b.shape:
        raise ValueError(f"original and decoded differ in shape: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0
    return int(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64))))


def _win_size(shape):
    """The Gaussian window's crop size, shrunk to the largest odd size that fits a small plane.

    scikit-image always filters with the 11-tap Gaussian (reflect padding); a
    smaller ``win_size`` only narrows the border that is cropped before the mean.
    """
    side = min(shape)
    if side >= SSIM_WIN:
        return SSIM_WIN
    return side if side % 2 == 1 else side - 1


def ssim(original, decoded, data_range=None):
    """Mean SSIM (Gaussian window, sigma 1.5, R = dynamic range) over the 2-D planes.

    Planes smaller than 11 pixels on a side use the largest odd window that fits.
    """
    from skimage.metrics import structural_similarity  # lazy: scipy would add ~40 MiB to each speed-benchmark child

    a, b = _pair(original, decoded)
    r = dynamic_range(original) if data_range is None else float(data_range)
    values = [
        structural_similarity(
            pa,
            pb,
            data_range=r,
            gaussian_weights=True,
            sigma=SSIM_SIGMA,
            use_sample_covariance=False,
            win_size=_win_size(pa.shape),
        )
        for pa, pb in zip(planes(a), planes(b))
    ]
    return float(np.mean(values))


def _ssim_terms(x, y, data_range):
    """Mean SSIM and mean contrast-structure term of one plane, filtered exactly as scikit-image does."""
    from scipy.ndimage import gaussian_filter  # lazy: scipy would add ~40 MiB to each speed-benchmark child

    def blur(z):
        return gaussian_filter(z, sigma=SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    luminance = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    cs = (2 * cxy + c2) / (vx + vy + c2)
    pad = (_win_size(x.shape) - 1) // 2
    crop = (slice(pad, x.shape[0] - pad), slice(pad, x.shape[1] - pad))
    return float(np.mean((luminance * cs)[crop])), float(np.mean(cs[crop]))


def _downsample(z):
    """2x2 average; an odd last row or column is dropped."""
    r, c = (z.shape[0] // 2) * 2, (z.shape[1] // 2) * 2
    z = z[:r, :c]
    return 0.25 * (z[0::2, 0::2] + z[1::2, 0::2] + z[0::2, 1::2] + z[1::2, 1::2])


def ms_ssim_scales(shape):
    """Number of MS-SSIM scales for a plane: at most 5, while the coarsest side keeps the 11-pixel window."""
    side = min(shape)
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and (side // 2**scales) >= SSIM_WIN:
        scales += 1
    return scales


def _ms_ssim_plane(x, y, data_range):
    m = ms_ssim_scales(x.shape)
    weights = np.asarray(MS_SSIM_WEIGHTS[:m])
    weights = weights / weights.sum()
    value = 1.0
    for j in range(m):
        s, cs = _ssim_terms(x, y, data_range)
        if j == m - 1:
            value *= max(s, 0.0) ** weights[j]
        else:
            value *= max(cs, 0.0) ** weights[j]
            x, y = _downsample(x), _downsample(y)
    return float(value)


def ms_ssim(original, decoded, data_range=None):
    """Multi-scale SSIM (Wang et al. 2003), mean over the 2-D planes.

    Five scales with weights 0.0448, 0.2856, 0.3001, 0.2363, 0.1333, the
    11-tap sigma-1.5 Gaussian window and 2x2 average downsampling; contrast-
    structure terms at scales 1..M-1 and the full SSIM (luminance x contrast-
    structure) at the coarsest scale M. A plane too small for five scales uses
    the first M weights renormalized to sum to 1, with M the largest count whose
    coarsest side is still >= 11 pixels (one scale, i.e. SSIM, below 22 pixels).
    Negative terms are clipped to 0 so the result stays real, in [0, 1].
    """
    a, b = _pair(original, decoded)
    r = dynamic_range(original) if data_range is None else float(data_range)
    return float(np.mean([_ms_ssim_plane(pa, pb, r) for pa, pb in zip(planes(a), planes(b))]))


def bpp(n_bytes, pixels):
    """Bits per pixel: 8 * n_bytes / pixels, pixels = rows * cols * frames * samples."""
    if pixels <= 0:
        raise ValueError(f"pixels must be positive, got {pixels}")
    return 8.0 * n_bytes / pixels


def compression_ratio(n_bytes, rows, cols, frames=1, samples=1, bits_allocated=16):
    """Stored size at BitsAllocated divided by the compressed size."""
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be positive, got {n_bytes}")
    return rows * cols * frames * samples * bits_allocated / 8.0 / n_bytes


def reduction(cr):
    """Fraction of the stored size saved, 1 - 1/CR (the seed paper's "compression rate")."""
    return 1.0 - 1.0 / cr


def _geometry(shape):
    if len(shape) == 2:
        return shape[0], shape[1], 1, 1
    if len(shape) == 3:
        return shape[0], shape[1], 1, shape[2]
    if len(shape) == 4:
        return shape[1], shape[2], shape[0], shape[3]
    raise ValueError(f"unsupported image shape {shape}")


def evaluate(original, decoded, n_bytes, bits_stored, bits_allocated):
    """Every protocol metric of one decoded image, under the project's standard names."""
    original = np.asarray(original)
    rows, cols, frames, samples = _geometry(original.shape)
    cr = compression_ratio(n_bytes, rows, cols, frames, samples, bits_allocated)
    return {
        "bpp": bpp(n_bytes, original.size),
        "psnr": psnr(original, decoded),
        "psnr_bitdepth": psnr_bitdepth(original, decoded, bits_stored),
        "ssim": ssim(original, decoded),
        "ms_ssim": ms_ssim(original, decoded),
        "max_abs_err": max_abs_error(original, decoded),
        "cr": cr,
        "reduction": reduction(cr),
    }


def _clean_curve(x, y, keep):
    """Finite points sorted by x, one per distinct x (``keep`` chooses y among ties)."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError("each curve needs two 1-D sequences of equal length")
    ok = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[ok], ys[ok]
    order = np.lexsort((ys, xs))
    xs, ys = xs[order], ys[order]
    ux = np.unique(xs)
    uy = np.array([keep(ys[xs == v]) for v in ux])
    return ux, uy


def _log_rate_curve(rates, psnrs):
    rates = np.asarray(rates, dtype=np.float64)
    psnrs = np.asarray(psnrs, dtype=np.float64)
    if rates.shape != psnrs.shape:
        raise ValueError("rates and PSNRs of a curve differ in length")
    ok = rates > 0
    return np.log(rates[ok]), psnrs[ok]


def bd_rate(rates_anchor, psnr_anchor, rates_test, psnr_test, min_psnr=40.0, max_psnr=55.0):
    """Bjontegaard delta rate of the test codec against the anchor, in percent.

    log(rate) is interpolated as a function of PSNR with PCHIP and integrated
    over the PSNR interval both curves cover, intersected with
    [min_psnr, max_psnr]. Negative means the test codec needs fewer bits.
    Points with non-finite PSNR (lossless) or non-positive rate are dropped,
    and among points with equal PSNR the smallest rate is kept. Returns nan
    when a curve has fewer than 2 points or the interval is empty.
    """
    from scipy.interpolate import PchipInterpolator  # lazy: scipy would add ~40 MiB to each speed-benchmark child

    la, pa = _log_rate_curve(rates_anchor, psnr_anchor)
    lt, pt = _log_rate_curve(rates_test, psnr_test)
    pa, la = _clean_curve(pa, la, np.min)
    pt, lt = _clean_curve(pt, lt, np.min)
    if len(pa) < 2 or len(pt) < 2:
        return math.nan
    lo = max(pa[0], pt[0], min_psnr)
    hi = min(pa[-1], pt[-1], max_psnr)
    if not hi > lo:
        return math.nan
    int_a = PchipInterpolator(pa, la).integrate(lo, hi)
    int_t = PchipInterpolator(pt, lt).integrate(lo, hi)
    return float((math.exp((int_t - int_a) / (hi - lo)) - 1.0) * 100.0)


def bd_psnr(rates_anchor, psnr_anchor, rates_test, psnr_test):
    """Bjontegaard delta PSNR in dB (positive = the test codec is better at equal rate).

    PSNR is interpolated with PCHIP as a function of log(rate) and averaged
    over the log-rate interval both curves cover; the same cleaning as
    :func:`bd_rate` applies (ties in rate keep the highest PSNR). nan when a
    curve has fewer than 2 points or the interval is empty.
    """
    from scipy.interpolate import PchipInterpolator  # lazy: scipy would add ~40 MiB to each speed-benchmark child

    la, pa = _log_rate_curve(rates_anchor, psnr_anchor)
    lt, pt = _log_rate_curve(rates_test, psnr_test)
    la, pa = _clean_curve(la, pa, np.max)
    lt, pt = _clean_curve(lt, pt, np.max)
    if len(la) < 2 or len(lt) < 2:
        return math.nan
    lo = max(la[0], lt[0])
    hi = min(la[-1], lt[-1])
    if not hi > lo:
        return math.nan
    int_a = PchipInterpolator(la, pa).integrate(lo, hi)
    int_t = PchipInterpolator(lt, pt).integrate(lo, hi)
    return float((int_t - int_a) / (hi - lo))
