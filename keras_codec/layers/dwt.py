"""Multi-level 2-D discrete wavelet transform by lifting, as Keras layers.

Wavelets (name here, PyWavelets name):

- ``"haar"`` (``"haar"``),
- ``"legall53"``: LeGall 5/3, the JPEG 2000 reversible filter, used here in
  float (``"bior2.2"``),
- ``"cdf97"``: CDF 9/7, the JPEG 2000 irreversible filter (``"bior4.4"``).

Boundary modes:

- ``"periodization"``: periodic extension. Coefficients equal
  ``pywt.wavedec2(x, pywt_name, mode="periodization", level=levels,
  axes=(1, 2))`` exactly (same positions, same scaling).
- ``"symmetric"``: whole-sample symmetric extension (``x[-1] = x[1]``), as
  JPEG 2000 does; no jump at the image border, so fewer large detail
  coefficients there. One level equals ``pywt.dwt2(x, pywt_name,
  mode="reflect")`` cropped to ``n/2`` coefficients starting at index 0 (haar),
  1 (legall53) or 2 (cdf97) on each axis; PyWavelets keeps the extra border
  coefficients, so its multi-level output differs from this (critically
  sampled) one.

The layers use only strided slices, concat, depth_to_space and scalar
multiply-adds, so they convert to TFLite builtin ops, and need no static H and
W: a graph traced with input spec ``(1, None, None, C)`` runs at any size that
is a multiple of ``2**levels`` (only C must be static).
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from edge_runtime.exact_dwt import LIFTINGS

__all__ = ["DWT2D", "IDWT2D", "WAVELETS", "MODES", "PYWT_NAMES"]


@dataclass(frozen=True)
class _Lifting:
    """A lifting factorization.

    ``steps`` are applied in order to the even (``s``) and odd (``d``) samples:
    ``("d", c, True)`` means ``d[i] += c * (s[i] + s[i+1])``, ``("s", c, True)``
    means ``s[i] += c * (d[i-1] + d[i])``; with ``False`` only the same-index
    neighbour is used (``d[i] += c * s[i]``). Finally ``s *= scale_s`` and
    ``d *= scale_d``.
    """

    steps: tuple
    scale_s: float
    scale_d: float


# The lifting factorizations (JPEG 2000, ISO/IEC 15444-1 Annex F, for CDF 9/7) are those of
# edge_runtime.exact_dwt, the numpy float64 lifting the decoder of the error-bounded mode
# runs: one table for both. Their final scalings make the coefficients equal PyWavelets'
# (its filters have a DC gain of sqrt(2) and its high-pass has the opposite sign of the
# lifting one); without them the lifting output is JPEG 2000's normalization.
_LIFTINGS = {name: _Lifting(*spec) for name, spec in LIFTINGS.items()}
WAVELETS = tuple(_LIFTINGS)
MODES = ("periodization", "symmetric")
PYWT_NAMES = {"haar": "haar", "legall53": "bior2.2", "cdf97": "bior4.4"}


def _slice(x: tf.Tensor, axis: int, start, stop, step=None) -> tf.Tensor:
    index = [slice(None)] * x.shape.rank
    index[axis] = slice(start, stop, step)
    return x[tuple(index)]


def _next(s: tf.Tensor, axis: int, mode: str) -> tf.Tensor:
    """``s[i+1]`` along ``axis``, extended past the end.

    Periodic: ``s[n] = s[0]``. Whole-sample symmetric: ``x[N] = x[N-2]``, and
    ``x[N-2]`` is the last even sample, so ``s[n] = s[n-1]``. Both formulas give
    ``s`` itself when ``n = 1`` (the first slice is then empty), so they also
    hold when ``n`` is unknown at trace time.
    """
    if s.shape[axis] == 1:
        return s
    tail = _slice(s, axis, 0, 1) if mode == "periodization" else _slice(s, axis, -1, None)
    return tf.concat([_slice(s, axis, 1, None), tail], axis=axis)


def _prev(d: tf.Tensor, axis: int, mode: str) -> tf.Tensor:
    """``d[i-1]`` along ``axis``, extended before the start.

    Periodic: ``d[-1] = d[n-1]``. Whole-sample symmetric: ``x[-1] = x[1]``, the
    first odd sample, so ``d[-1] = d[0]``. As in :func:`_next`, ``n = 1`` needs
    no special case.
    """
    if d.shape[axis] == 1:
        return d
    head = _slice(d, axis, -1, None) if mode == "periodization" else _slice(d, axis, 0, 1)
    return tf.concat([head, _slice(d, axis, 0, -1)], axis=axis)


def _step(s, d, step, axis, mode, sign):
    target, c, pair = step
    c = sign * c
    if target == "d":
        src = s + _next(s, axis, mode) if pair else s
        return s, d + c * src
    src = d + _prev(d, axis, mode) if pair else d
    return s + c * src, d


def _analysis_1d(x, lifting: _Lifting, axis: int, mode: str):
    """One level along ``axis``: returns (low, high), each half as long."""
    s = _slice(x, axis, 0, None, 2)
    d = _slice(x, axis, 1, None, 2)
    for step in lifting.steps:
        s, d = _step(s, d, step, axis, mode, 1.0)
    return s * lifting.scale_s, d * lifting.scale_d


def _synthesis_1d(s, d, lifting: _Lifting, axis: int, mode: str):
    """Inverse of :func:`_analysis_1d` without the final interleave: (even, odd) samples."""
    s = s * (1.0 / lifting.scale_s)
    d = d * (1.0 / lifting.scale_d)
    for step in reversed(lifting.steps):
        s, d = _step(s, d, step, axis, mode, -1.0)
    return s, d


def _analysis_2d(x, lifting, mode):
    """One 2-D level: (approx, details) with details = concat(cH, cV, cD) on channels."""
    c = x.shape[-1]
    low_h, high_h = _analysis_1d(x, lifting, axis=1, mode=mode)
    # Both halves go through the W-axis transform together as 2C channels.
    s, d = _analysis_1d(tf.concat([low_h, high_h], axis=-1), lifting, axis=2, mode=mode)
    # s = [LL, HL] and d = [LH, HH] (first letter: H axis), so the details
    # [s[C:], d] are pywt's (cH, cV, cD) = (high-H/low-W, low-H/high-W, high-both).
    return s[..., :c], tf.concat([s[..., c:], d], axis=-1)


def _synthesis_2d(approx, details, lifting, mode):
    """One 2-D level back, on the four polyphase components, interleaved once at the end.

    The W-axis inverse gives the even and odd columns of [low_h, high_h]; the H-axis
    inverse runs on even and odd columns together (it acts on each column alone) and
    gives the even and odd rows. ``depth_to_space`` then puts channel block
    ``2 * row_parity + col_parity`` at that position of each 2x2 block: no reshape
    with computed shapes, so H and W may be unknown at trace time.
    """
    c = approx.shape[-1]
    s = tf.concat([approx, details[..., :c]], axis=-1)  # [LL, HL]
    d = details[..., c:]  # [LH, HH]
    even_w, odd_w = _synthesis_1d(s, d, lifting, axis=2, mode=mode)  # each [low_h, high_h]
    low_h = tf.concat([even_w[..., :c], odd_w[..., :c]], axis=-1)
    high_h = tf.concat([even_w[..., c:], odd_w[..., c:]], axis=-1)
    even_h, odd_h = _synthesis_1d(low_h, high_h, lifting, axis=1, mode=mode)  # each [even col, odd col]
    return tf.nn.depth_to_space(tf.concat([even_h, odd_h], axis=-1), 2)


def _check_nhwc(name: str, input_shape, multiple: int, levels: int) -> tf.TensorShape:
    """An NHWC shape with static C; H and W may be unknown (``None``) at trace time,
    and when known must be multiples of ``multiple``."""
    shape = tf.TensorShape(input_shape)
    shown = tuple(shape.as_list()) if shape.rank is not None else "<unknown rank>"
    if shape.rank != 4:
        raise ValueError(f"{name} expects NHWC input (batch, H, W, C); got shape {shown}.")
    _, h, w, c = shape.as_list()
    if c is None:
        raise ValueError(f"{name} needs a static number of channels C; got shape {shown}.")
    if (h is not None and h % multiple) or (w is not None and w % multiple):
        raise ValueError(
            f"{name} needs H and W that are multiples of {multiple} (2**levels with levels={levels}); "
            f"got shape {shown}. Pad the image to a multiple of {multiple} first."
        )
    return shape


def _times(n, f):
    return None if n is None else n * f


def _check_args(name, wavelet, levels, mode):
    if wavelet not in _LIFTINGS:
        raise ValueError(f"{name}: unknown wavelet {wavelet!r}; choose one of {WAVELETS}.")
    if mode not in MODES:
        raise ValueError(f"{name}: unknown mode {mode!r}; choose one of {MODES}.")
    if int(levels) != levels or levels < 1:
        raise ValueError(f"{name}: levels must be a positive integer; got {levels!r}.")
    return int(levels)


class _WaveletLayer(tf.keras.layers.Layer):
    def __init__(self, wavelet: str = "cdf97", levels: int = 1, mode: str = "periodization", **kwargs):
        super().__init__(**kwargs)
        self.levels = _check_args(type(self).__name__, wavelet, levels, mode)
        self.wavelet = wavelet
        self.mode = mode
        self._lifting = _LIFTINGS[wavelet]

    def get_config(self):
        config = super().get_config()
        config.update({"wavelet": self.wavelet, "levels": self.levels, "mode": self.mode})
        return config


@tf.keras.utils.register_keras_serializable(package="keras_codec")
class DWT2D(_WaveletLayer):
    """Multi-level separable 2-D wavelet analysis of an NHWC tensor.

    Returns ``levels + 1`` tensors, coarse first, as ``pywt.wavedec2`` does:
    ``[approx_L (B, H/2^L, W/2^L, C), details_L (.., 3C), ..., details_1
    (B, H/2, W/2, 3C)]``, where a details tensor is the channel concat of
    (cH, cV, cD), each with the C input channels. H and W must be multiples of
    ``2**levels``; they may be unknown at trace time (input spec ``(1, None, None,
    C)``), and are then not checked: pad first. See the module docstring for the modes.
    """

    def _check(self, input_shape):
        return _check_nhwc(type(self).__name__, input_shape, 2**self.levels, self.levels)

    def build(self, input_shape):
        self._check(input_shape)
        super().build(input_shape)

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs, dtype=self.compute_dtype)
        self._check(x.shape)
        details = []
        for _ in range(self.levels):
            x, det = _analysis_2d(x, self._lifting, self.mode)
            details.append(det)
        return [x] + details[::-1]

    def compute_output_shape(self, input_shape):
        b, h, w, c = self._check(input_shape).as_list()

        def div(n, f):
            return None if n is None else n // f

        f = 2**self.levels
        shapes = [tf.TensorShape((b, div(h, f), div(w, f), c))]
        for level in range(self.levels, 0, -1):
            f = 2**level
            shapes.append(tf.TensorShape((b, div(h, f), div(w, f), 3 * c)))
        return shapes


@tf.keras.utils.register_keras_serializable(package="keras_codec")
class IDWT2D(_WaveletLayer):
    """Exact inverse of :class:`DWT2D`: takes its list of tensors, returns the image."""

    def _check(self, input_shape):
        name = type(self).__name__
        # A list of shapes, not one shape given as a tuple of dimensions.
        is_list = isinstance(input_shape, (list, tuple)) and not any(
            d is None or isinstance(d, int) for d in input_shape
        )
        shapes = [tf.TensorShape(s) for s in input_shape] if is_list else None
        found = [tuple(s.as_list()) if s.rank is not None else None for s in shapes] if shapes else input_shape
        if shapes is None or len(shapes) != self.levels + 1 or any(s.rank != 4 for s in shapes):
            raise ValueError(
                f"{name}(levels={self.levels}) expects a list of {self.levels + 1} NHWC tensors "
                f"[approx, details_{self.levels}, ..., details_1] as DWT2D returns; got shapes {found}."
            )
        _, h, w, c = shapes[0].as_list()
        if c is None:
            raise ValueError(f"{name} needs a static number of channels C; got shapes {found}.")
        for i, s in enumerate(shapes[1:]):
            f = 2**i
            # Unknown (None) H or W on either side is checked at run time by the ops themselves.
            expected = [_times(h, f), _times(w, f), 3 * c]
            if any(a is not None and b is not None and a != b for a, b in zip(s.as_list()[1:], expected)):
                raise ValueError(
                    f"{name}: details {i + 1} (level {self.levels - i}) should have shape "
                    f"(batch, {_times(h, f)}, {_times(w, f)}, {3 * c}) to match approx {tuple(shapes[0].as_list())}; "
                    f"got shapes {found}."
                )
        return shapes

    def build(self, input_shape):
        self._check(input_shape)
        super().build(input_shape)

    def call(self, inputs):
        coeffs = [tf.convert_to_tensor(t, dtype=self.compute_dtype) for t in inputs]
        self._check([t.shape for t in coeffs])
        x = coeffs[0]
        for det in coeffs[1:]:
            x = _synthesis_2d(x, det, self._lifting, self.mode)
        return x

    def compute_output_shape(self, input_shape):
        shapes = self._check(input_shape)
        b, h, w, c = shapes[0].as_list()
        f = 2**self.levels
        return tf.TensorShape((b, _times(h, f), _times(w, f), c))
