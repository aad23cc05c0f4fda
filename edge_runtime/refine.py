"""The learned lifting refinement in numpy float64, for the error-bounded mode's exact base.

The refinement (keras_codec.models.refine) adds one lifting step per level: the details of
level i get P_i(LL_i) added back at synthesis, P_i a small CNN of the low band. The lossy
decoder runs it inside decoder.tflite; the error-bounded mode's base must be the same bits on
every CPU (like edge_runtime.exact_dwt), so here every convolution is a fixed sequence of
elementwise IEEE multiplies and adds in float64, no BLAS and no reordering.

Weights: `refine.npz` with arrays w0, w1, ... = per level (finest first) kernel (3, 3, Cin,
Cout) and bias of each conv layer; the first kernel is used minus its mean over (3, 3, Cin)
(a zero-mean convolution, blind to the local level); ReLU after every layer but the last. Input LL_i · INPUT_GAIN / 2^i, output times 2^i / INPUT_GAIN.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edge_runtime import exact_dwt

REFINE_FILE = "refine.npz"
INPUT_GAIN = 16.0


class ExactRefinement:
    """Per-level predictors [(kernel, bias), ...] (float64) evaluated bit-reproducibly."""

    def __init__(self, levels_weights: list, wavelet: str = "cdf97"):
        self.wavelet = wavelet  # the transform it refines
        self.levels = [[(np.asarray(k, np.float64), np.asarray(b, np.float64)) for k, b in layers]
                       for layers in levels_weights]

    @classmethod
    def load(cls, path, layers: int, max_levels: int, wavelet: str = "cdf97") -> "ExactRefinement":
        path = Path(path)
        with np.load(path) as z:
            arrays = [z[f"w{i}"] for i in range(len(z.files))]
        if len(arrays) != 2 * layers * max_levels:
            raise ValueError(f"{path}: {len(arrays)} arrays, expected {2 * layers * max_levels} "
                             f"({max_levels} levels of {layers} conv layers)")
        per = [list(arrays[2 * layers * i:2 * layers * (i + 1)]) for i in range(max_levels)]
        for p in per:  # zero-mean first kernels; math.fsum is exactly rounded, so the same on every CPU
            k = p[0].astype(np.float64)
            means = [math.fsum(k[..., o].ravel().tolist()) / k[..., o].size for o in range(k.shape[-1])]
            p[0] = k - np.array(means)
        return cls([[(p[2 * j], p[2 * j + 1]) for j in range(layers)] for p in per], wavelet)

    def predict(self, ll: np.ndarray, level: int) -> tuple:
        """P_level(LL) as three 2-D float64 arrays (H, V, D)."""
        g = 2.0 ** level
        h = [np.asarray(ll, np.float64) * (INPUT_GAIN / g)]
        layers = self.levels[level - 1]
        for n, (kernel, bias) in enumerate(layers):
            h = conv3x3(h, kernel, bias)
            if n < len(layers) - 1:
                h = [np.maximum(c, 0.0) for c in h]
        return tuple(c * (g / INPUT_GAIN) for c in h)


def conv3x3(channels: list, kernel: np.ndarray, bias: np.ndarray) -> list:
    """'same' 3×3 convolution with zero padding (as TensorFlow's), summed tap by tap in a fixed order."""
    rows, cols = channels[0].shape
    padded = [np.pad(c, 1) for c in channels]
    out = []
    for o in range(kernel.shape[3]):
        acc = np.full((rows, cols), bias[o], np.float64)
        for a in range(3):
            for b in range(3):
                for i, p in enumerate(padded):
                    w = kernel[a, b, i, o]
                    if w != 0.0:
                        acc = acc + w * p[a:a + rows, b:b + cols]
        out.append(acc)
    return out


def synthesis(bands: list, levels: int, refinement: ExactRefinement, wavelet: str = "cdf97",
              mode: str = "symmetric") -> np.ndarray:
    """Refined inverse transform in float64: at each level, details += P(LL), then one lifting level."""
    x = np.asarray(bands[0], np.float64)
    for k, trio in enumerate(bands[1:levels + 1]):
        pred = refinement.predict(x, levels - k)
        trio = tuple(np.asarray(d, np.float64) + p for d, p in zip(trio, pred))
        x = exact_dwt.synthesis([x, trio], 1, wavelet, mode)
    return x
