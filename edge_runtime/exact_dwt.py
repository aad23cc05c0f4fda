"""The lifting wavelet transforms in numpy float64, bit-reproducible on every CPU.

The error-bounded and lossless modes code a residual against a base reconstruction, so
encoder and decoder must compute that base to the last bit. TFLite kernels may not
(XNNPACK and the reference kernels differ in summation order and FMA use), but a numpy
float64 lifting does: every step is one elementwise multiply and one elementwise add
(separate ufuncs, never fused), and IEEE 754 rounds each of them the same way everywhere.

The conventions are those of keras_codec.layers.DWT2D / IDWT2D (same lifting constants,
final scalings, whole-sample symmetric or periodic extension, band order
[LL, (H, V, D) coarsest, ..., (H, V, D) finest]), so the bands the TFLite encoder
produces invert here to the plane they came from, up to float32 rounding.
"""
from __future__ import annotations

import numpy as np

__all__ = ["LIFTINGS", "WAVELETS", "ExactTransforms", "analysis", "synthesis"]

# CDF 9/7 lifting constants (JPEG 2000, ISO/IEC 15444-1 Annex F).
_A, _B, _G, _D = -1.586134342059924, -0.052980118572961, 0.882911075530934, 0.443506852043971
_K = 1.230174104914001
_SQRT2 = float(np.sqrt(2.0))

LIFTINGS = {
    "haar": ((("d", -1.0, False), ("s", 0.5, False)), _SQRT2, -1.0 / _SQRT2),
    "legall53": ((("d", -0.5, True), ("s", 0.25, True)), _SQRT2, -1.0 / _SQRT2),
    "cdf97": ((("d", _A, True), ("s", _B, True), ("d", _G, True), ("s", _D, True)), _SQRT2 / _K, -_K / _SQRT2),
}
"""name -> (steps, scale_s, scale_d). A step ("d", c, pair) is d[i] += c*(s[i] + s[i+1]) (pair) or
c*s[i]; ("s", c, pair) is s[i] += c*(d[i-1] + d[i]) or c*d[i]; then s *= scale_s, d *= scale_d.
keras_codec.layers.DWT2D / IDWT2D use the same table."""
WAVELETS = tuple(LIFTINGS)


def _next(s: np.ndarray, mode: str) -> np.ndarray:
    """s[i+1] along axis 0; symmetric: s[n] = s[n-1], periodic: s[n] = s[0]."""
    tail = s[:1] if mode == "periodization" else s[-1:]
    return np.concatenate([s[1:], tail], axis=0)


def _prev(d: np.ndarray, mode: str) -> np.ndarray:
    """d[i-1] along axis 0; symmetric: d[-1] = d[0], periodic: d[-1] = d[n-1]."""
    head = d[-1:] if mode == "periodization" else d[:1]
    return np.concatenate([head, d[:-1]], axis=0)


def _lift(s, d, step, mode, sign, axis=0):
    """One lifting step along `axis` (0 or 1), in place on a fresh `s` or `d` (the caller's own arrays, never an
    input): src = x[i] + x[i±1] (or x[i]), then target += c * src, as separate IEEE operations."""
    target, c, pair = step
    c = sign * c
    if target == "d":
        src = _pair_sum(s, mode, +1, axis) if pair else np.multiply(c, s)
        if pair:
            np.multiply(c, src, out=src)
        np.add(d, src, out=d)
        return s, d
    src = _pair_sum(d, mode, -1, axis) if pair else np.multiply(c, d)
    if pair:
        np.multiply(c, src, out=src)
    np.add(s, src, out=s)
    return s, d


def _pair_sum(x: np.ndarray, mode: str, direction: int, axis: int = 0) -> np.ndarray:
    """x[i] + x[i+1] (direction +1, as `_next`) or x[i] + x[i-1] (-1, as `_prev`) along `axis` (0 or 1)."""
    out = np.empty_like(x)
    at = (lambda a, b: (slice(a, b),)) if axis == 0 else (lambda a, b: (slice(None), slice(a, b)))
    if direction > 0:
        np.add(x[at(None, -1)], x[at(1, None)], out=out[at(None, -1)])
        np.add(x[at(-1, None)], x[at(None, 1)] if mode == "periodization" else x[at(-1, None)], out=out[at(-1, None)])
    else:
        np.add(x[at(1, None)], x[at(None, -1)], out=out[at(1, None)])
        np.add(x[at(None, 1)], x[at(-1, None)] if mode == "periodization" else x[at(None, 1)], out=out[at(None, 1)])
    return out


def _analysis_1d(x, lifting, mode):
    steps, scale_s, scale_d = lifting
    s, d = x[0::2].copy(), x[1::2].copy()
    for step in steps:
        s, d = _lift(s, d, step, mode, 1.0)
    return np.multiply(s, scale_s), np.multiply(d, scale_d)


def _synthesis_1d(s, d, lifting, mode, axis=0):
    """Inverse of _analysis_1d along `axis` (0 or 1): the same operations on each element along either
    axis, so the same bits; along axis 1 of a row-major plane the inner loops run along its rows."""
    steps, scale_s, scale_d = lifting
    s = np.multiply(s, 1.0 / scale_s)
    d = np.multiply(d, 1.0 / scale_d)
    for step in reversed(steps):
        s, d = _lift(s, d, step, mode, -1.0, axis)
    if axis == 0:
        out = np.empty((s.shape[0] + d.shape[0],) + s.shape[1:], np.float64)
        out[0::2], out[1::2] = s, d
    else:
        out = np.empty((s.shape[0], s.shape[1] + d.shape[1]), np.float64)
        out[:, 0::2], out[:, 1::2] = s, d
    return out


def _lifting(wavelet: str):
    if wavelet not in LIFTINGS:
        raise ValueError(f"unknown wavelet {wavelet!r}; expected one of {WAVELETS}")
    return LIFTINGS[wavelet]


def analysis(plane: np.ndarray, levels: int, wavelet: str = "cdf97", mode: str = "symmetric") -> list:
    """2-D plane (sides multiples of 2**levels) -> [LL, (H, V, D) coarsest, ..., finest]."""
    lifting = _lifting(wavelet)
    x = np.asarray(plane, np.float64)
    details = []
    for _ in range(levels):
        low_h, high_h = _analysis_1d(x, lifting, mode)            # along rows (H axis)
        ll, cv = (a.T for a in _analysis_1d(low_h.T, lifting, mode))   # along columns (W axis)
        ch, cd = (a.T for a in _analysis_1d(high_h.T, lifting, mode))
        details.append((ch, cv, cd))
        x = ll
    return [x] + details[::-1]


def synthesis(bands: list, levels: int, wavelet: str = "cdf97", mode: str = "symmetric") -> np.ndarray:
    """Inverse of :func:`analysis`, in float64: the same bits on every machine."""
    lifting = _lifting(wavelet)
    x = np.asarray(bands[0], np.float64)
    for ch, cv, cd in bands[1:levels + 1]:  # along columns (W axis), then rows (H axis)
        low_h = _synthesis_1d(x, np.asarray(cv, np.float64), lifting, mode, axis=1)
        high_h = _synthesis_1d(np.asarray(ch, np.float64), np.asarray(cd, np.float64), lifting, mode, axis=1)
        x = _synthesis_1d(low_h, high_h, lifting, mode)
    return x


class ExactTransforms:
    """A PlaneCoder transform (`analysis` / `synthesis`) in numpy: no TFLite, no post-filter.

    Slower than the bundle's graphs; used where bit-reproducibility matters more than speed
    and in tests that need any plane size without TFLite.
    """

    def __init__(self, wavelet: str = "cdf97", mode: str = "symmetric"):
        _lifting(wavelet)
        self.wavelet, self.mode = wavelet, mode

    def analysis(self, plane: np.ndarray, levels: int) -> list:
        b = analysis(plane, levels, self.wavelet, self.mode)
        return [b[0].astype(np.float32)] + [tuple(x.astype(np.float32) for x in trio) for trio in b[1:]]

    def synthesis(self, bands: list, levels: int, step: float | None = None) -> np.ndarray:
        return synthesis(bands, levels, self.wavelet, self.mode).astype(np.float32)
