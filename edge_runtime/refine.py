"""The learned lifting refinement on the edge: an integer network, the same bits on every CPU.

The refinement (keras_codec.models.refine) adds one lifting step per level: at synthesis the
details of level i get P_i(LL_i) added back, P_i a small CNN of the low band. The encoder
subtracts the float network's prediction (encoder.tflite); the decoders add this integer
version of it, so the decoded transform, and with the int8 post-filter the decoded pixels,
are the same bits with every TFLite kernel library and on every CPU, and the error-bounded
mode's base (PlaneCoder.decode_exact) is reproducible as its residual coding requires. The
two predictions differ by the integer rounding (2^-16 of an activation or a weight),
far below the quantizer step.

Integer network (DESIGN.md, Determinism): weights are rounded to integers at a scale of
2^WEIGHT_BITS, activations to integers at a scale of 2^ACT_BITS with one rule, round half
up: a = floor((acc + 2^(s-1)) / 2^s). Convolutions are evaluated with integer-valued float64
arrays and BLAS: every product and partial sum is an integer below 2^53 (or one times a power
of two), so it is exact in any summation order. Input: LL_i · INPUT_GAIN / 2^i rounded at
2^ACT_BITS (a power-of-two scaling, exact); the first kernel is zero-mean (its rounded taps are
made to sum to exactly zero), so the network is blind to the local level; ReLU after every
layer but the last; the output, at scale 2^(ACT_BITS + WEIGHT_BITS), is multiplied by
2^i / INPUT_GAIN.

Weights: `refine.npz` with arrays w0, w1, ... = per level (finest first) kernel (3, 3, Cin,
Cout) and bias of each conv layer, as the Keras layers hold them.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edge_runtime import exact_dwt

REFINE_FILE = "refine.npz"
INPUT_GAIN = 16.0
WEIGHT_BITS = 16
ACT_BITS = 16
_BLOCK_PIXELS = 12288   # pixels per block of rows (its activations cache-sized): ~20 % faster than 8192 or 16384
_MIN_BLOCK_ROWS = 8     # below this the rows each block recomputes around it cost more than the cache saves
_EXACT_LIMIT = 2.0 ** 52


def _zero_mean_integer_kernel(k: np.ndarray) -> np.ndarray:
    """The first kernel minus its mean over (3, 3, Cin), rounded to integers that sum to exactly zero."""
    k = np.asarray(k, np.float64)
    out = np.empty_like(k)
    for o in range(k.shape[-1]):
        taps = k[..., o]
        mean = math.fsum(taps.ravel().tolist()) / taps.size  # exactly rounded: the same on every CPU
        q = np.round((taps - mean) * 2.0 ** WEIGHT_BITS)
        q[1, 1, 0] -= q.sum()  # integers: the sum is exact, so the centre tap absorbs the rounding
        out[..., o] = q
    return out


class ExactRefinement:
    """Per-level integer predictors [(kernel, bias), ...] (integer-valued float64)."""

    def __init__(self, levels_weights: list, wavelet: str = "cdf97"):
        """`levels_weights`: per level, [(kernel, bias), ...] float weights as the Keras layers hold them."""
        self.wavelet = wavelet  # the transform it refines
        self.levels = []
        for layers in levels_weights:
            ints = []
            for n, (k, b) in enumerate(layers):
                k = _zero_mean_integer_kernel(k) if n == 0 else np.round(np.asarray(k, np.float64) * 2.0 ** WEIGHT_BITS)
                b = np.round(np.asarray(b, np.float64) * 2.0 ** (WEIGHT_BITS + ACT_BITS))
                ints.append((k, b))
            self.levels.append(ints)
        # as run: kernels as (tap, Cout, Cin) for channels-first products; every layer but the last with the
        # rounding's half (round half up, between layers) in its bias and its weights and bias times 2^-s, so that
        # _next_input need only floor (a power-of-two scaling: the same sums, exactly); for the exactness check,
        # the largest sum of |integer taps| of an output channel and the largest |integer bias|
        half = 2.0 ** (WEIGHT_BITS - 1)
        self._run = []
        for layers in self.levels:
            run = []
            for n, (k, b) in enumerate(layers):
                last = n == len(layers) - 1
                b = b if last else b + half
                scale = 1.0 if last else 2.0 ** -WEIGHT_BITS
                run.append((np.ascontiguousarray(k.reshape(9, k.shape[2], k.shape[3]).transpose(0, 2, 1)) * scale,
                            b[:, None] * scale,
                            float(np.abs(k).sum(axis=(0, 1, 2)).max(initial=0.0)), float(np.abs(b).max(initial=0.0))))
            self._run.append(run)

    @classmethod
    def load(cls, path, layers: int, max_levels: int, wavelet: str = "cdf97") -> "ExactRefinement":
        path = Path(path)
        with np.load(path) as z:
            arrays = [z[f"w{i}"] for i in range(len(z.files))]
        if len(arrays) != 2 * layers * max_levels:
            raise ValueError(f"{path}: {len(arrays)} arrays, expected {2 * layers * max_levels} "
                             f"({max_levels} levels of {layers} conv layers)")
        per = [arrays[2 * layers * i:2 * layers * (i + 1)] for i in range(max_levels)]
        return cls([[(p[2 * j], p[2 * j + 1]) for j in range(layers)] for p in per], wavelet)

    def predict(self, ll: np.ndarray, level: int) -> tuple:
        """P_level(LL) as three 2-D float64 arrays (H, V, D)."""
        return tuple(self.predict_stacked(ll, level))

    def predict_stacked(self, ll: np.ndarray, level: int) -> np.ndarray:
        """`predict` as one C-contiguous (3, rows, cols) array.

        The network runs channels first (each channel's rows one contiguous run, so that a tap's product is one
        BLAS call on a slice of them) and block by block of rows, every layer of a block before the next block
        (with the rows around it that its output rows see: one more on each side per layer still to come), so
        that a block's activations stay in the CPU's cache instead of going through memory layer after layer.
        Every value is the one the whole-plane layers give: the same integers, in any summation order."""
        g = 2.0 ** level
        x = np.round(np.asarray(ll, np.float64) * (INPUT_GAIN / g * 2.0 ** ACT_BITS))
        if not np.all(np.abs(x) < 2.0 ** 30):
            raise ValueError("refinement input out of range (a corrupt stream?)")
        layers = self._run[level - 1]
        depth = len(layers)
        rows, cols = x.shape
        wp = cols + 2
        # the input with `depth` zero rows above and below (one more below: the last taps stay inside), and the
        # zero columns of the first layer's padding
        padded = np.zeros((rows + 2 * depth + 1, wp))
        padded[depth:depth + rows, 1:cols + 1] = x
        bound = float(np.abs(x).max(initial=0.0))
        out = np.empty((layers[-1][0].shape[1], rows, cols))
        block = max(_MIN_BLOCK_ROWS, _BLOCK_PIXELS // wp)
        for r0 in range(0, rows, block):
            r1 = min(rows, r0 + block)
            h = padded[r0:r1 + 2 * depth + 1].reshape(1, -1)  # image rows r0 - depth .. r1 + depth, the extra row
            top = r0 - depth + 1  # image row of the first output row of the next layer
            for n, (kernel, bias, taps_sum, bias_max) in enumerate(layers):
                acc = _conv3x3_wide(h, wp, kernel, bias, bound * taps_sum + bias_max)
                if n == depth - 1:
                    break
                h = _next_input(acc, wp, cols, top, rows)
                bound = float(h.max(initial=0.0))  # ReLU: no negative values
                top += 1
            out[:, r0:r1] = acc.reshape(-1, r1 - r0, wp)[:, :, :cols]
        out *= g / INPUT_GAIN / 2.0 ** (WEIGHT_BITS + ACT_BITS)
        return out


def _conv3x3_wide(h: np.ndarray, wp: int, kernel: np.ndarray, bias: np.ndarray, reach: float) -> np.ndarray:
    """The 'valid' 3x3 convolution of integer-valued float64 rows, channels first, h (Cin, (m + 1) * wp) (rows of
    the padded width wp = cols + 2, whose columns 0 and cols + 1 are the zero padding and whose last row is only
    read by the last taps), by an integer kernel (9 taps, Cout, Cin) and bias (Cout, 1), both possibly times one
    power of two: the output rows 1 .. m - 2 of h at every column of the padded width (Cout, (m - 2) * wp), its last
    two columns of every row not outputs of the plane. Every tap is a slice of each channel's run: one BLAS product,
    no copies. Exact: `reach` bounds every partial sum in units of that power of two (|h| bound times the largest
    sum of |integer taps| plus |integer bias|), checked below 2^52."""
    if reach >= _EXACT_LIMIT:
        raise ValueError("refinement activations out of the exact range (a corrupt stream?)")
    n = (h.shape[1] // wp - 3) * wp
    taps = [a * wp + b for a in range(3) for b in range(3)]
    if h.shape[0] == 1:  # one input channel: one product of the 9 taps stacked
        acc = kernel[:, :, 0].T @ np.stack([h[0, t:t + n] for t in taps])
        acc += bias
        return acc
    acc = np.empty((kernel.shape[1], n))
    acc[:] = bias
    for t, k in zip(taps, kernel):
        acc += k @ h[:, t:t + n]
    return acc


def _next_input(acc: np.ndarray, wp: int, cols: int, top: int, rows: int) -> np.ndarray:
    """The next layer's input rows (Cout, (m + 1) * wp) from a layer's output `acc` (Cout, m * wp) (_conv3x3_wide,
    at the scale 2^-s, its bias holding the rounding's half 2^(s-1)) whose first row is image row `top`:
    max(floor(acc), 0), one column to the right so that the two columns beyond the plane land on the padding
    columns (made zero), rows outside the plane (0 .. rows - 1) zero, one zero row below."""
    cout, n = acc.shape
    m = n // wp
    flat = np.empty((cout, n + wp))
    h = flat.reshape(cout, m + 1, wp)
    np.floor(acc, out=acc)
    np.maximum(acc, 0.0, out=flat[:, 1:n + 1])
    flat[:, 0] = 0.0
    flat[:, n + 1:] = 0.0
    h[:, :, 0] = 0.0
    h[:, :, cols + 1] = 0.0
    if top < 0:
        h[:, :-top] = 0.0
    if top + m > rows:
        h[:, rows - top:m] = 0.0
    return flat


def synthesis(bands: list, levels: int, refinement: ExactRefinement, wavelet: str = "cdf97",
              mode: str = "symmetric") -> np.ndarray:
    """Refined inverse transform in float64: at each level, details += P(LL), then one lifting level."""
    x = np.asarray(bands[0], np.float64)
    for k, trio in enumerate(bands[1:levels + 1]):
        x = level_synthesis(x, trio, refinement.predict(x, levels - k), wavelet, mode)
    return x


def level_synthesis(x: np.ndarray, trio: tuple, pred: tuple, wavelet: str = "cdf97",
                    mode: str = "symmetric") -> np.ndarray:
    """One level of `synthesis`: the low band `x` (float64) and the details `trio` plus the prediction `pred` of
    x (ExactRefinement.predict) -> the next finer low band."""
    trio = tuple(np.asarray(d, np.float64) + p for d, p in zip(trio, pred))
    return exact_dwt.synthesis([x, trio], 1, wavelet, mode)
