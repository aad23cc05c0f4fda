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
arrays and BLAS: every product and partial sum is an integer below 2^53, so it is exact in
any summation order. Input: LL_i · INPUT_GAIN / 2^i rounded at 2^ACT_BITS (a power-of-two
scaling, exact); the first kernel is zero-mean (its rounded taps are made to sum to exactly
zero), so the network is blind to the local level; ReLU after every layer but the last; the
output, at scale 2^(ACT_BITS + WEIGHT_BITS), is multiplied by 2^i / INPUT_GAIN.

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
_CHUNK_PIXELS = 8192    # pixels per block (cache-sized): 2-3x faster than whole planes
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
        g = 2.0 ** level
        x = np.round(np.asarray(ll, np.float64) * (INPUT_GAIN / g * 2.0 ** ACT_BITS))
        if not np.all(np.abs(x) < 2.0 ** 30):
            raise ValueError("refinement input out of range (a corrupt stream?)")
        h = x[:, :, None]
        layers = self.levels[level - 1]
        for n, (kernel, bias) in enumerate(layers):
            acc = conv3x3(h, kernel, bias)
            if n < len(layers) - 1:  # h = max(floor((acc + 2^(s-1)) / 2^s), 0), in place (2^-s is exact)
                acc += 2.0 ** (WEIGHT_BITS - 1)
                acc *= 2.0 ** -WEIGHT_BITS
                np.floor(acc, out=acc)
                h = np.maximum(acc, 0.0, out=acc)
        acc *= g / INPUT_GAIN / 2.0 ** (WEIGHT_BITS + ACT_BITS)
        return tuple(acc[:, :, c] for c in range(acc.shape[2]))


def conv3x3(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """'same' 3×3 convolution with zero padding (TensorFlow's) of integer-valued (H, W, Cin) float64
    by an integer kernel: exact (every partial sum an integer below 2^52), checked."""
    rows, cols, cin = x.shape
    bound = float(np.abs(x).max(initial=0.0)) * float(np.abs(kernel).sum(axis=(0, 1, 2)).max(initial=0.0))
    if bound + float(np.abs(bias).max(initial=0.0)) >= _EXACT_LIMIT:
        raise ValueError("refinement activations out of the exact range (a corrupt stream?)")
    cout = kernel.shape[3]
    if cin == 1:  # one input channel: one matmul of the 9 taps side by side (im2col)
        p = np.pad(x, ((1, 1), (1, 1), (0, 0)))
        out = np.empty((rows, cols, cout))
        step = max(1, _CHUNK_PIXELS // max(cols, 1))
        w = kernel.reshape(9, cout)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            cols_ = np.concatenate([p[r0 + a:r1 + a, b:b + cols, :] for a in range(3) for b in range(3)], axis=2)
            np.matmul(cols_.reshape(-1, 9), w, out=out[r0:r1].reshape(-1, cout))
        out += bias
        return out
    # several channels: accumulate the 9 taps' (pixels x Cin) @ (Cin x Cout) products. Outputs are computed
    # on the padded width (2 extra columns, dropped at the end), so that every tap of a block of rows is
    # one contiguous slice of the flattened padded input: no copies.
    wp = cols + 2
    flat = np.pad(x, ((1, 2), (1, 1), (0, 0))).reshape(-1, cin)  # one more row: the last taps stay inside
    wide = np.empty((rows, wp, cout))
    acc_all = wide.reshape(-1, cout)
    step = max(1, _CHUNK_PIXELS // wp)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        n = (r1 - r0) * wp
        acc = acc_all[r0 * wp:r1 * wp]
        acc[:] = bias
        for a in range(3):
            for b in range(3):
                start = (r0 + a) * wp + b
                acc += flat[start:start + n] @ kernel[a, b]
    return wide[:, :cols]


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
