"""Blockwise orthonormal 2-D DCT-II and its inverse as Keras layers.

Both layers keep the input's layout: every non-overlapping ``block_size`` x
``block_size`` block of each channel is replaced in place by its orthonormal
DCT-II (``scipy.fft.dctn(block, norm="ortho")``), so ``IDCT2D`` undoes
``DCT2D`` exactly up to float32 rounding. The maths is reshape, transpose and
2-D matmul only, so the layers convert to TFLite builtin ops.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["DCT2D", "IDCT2D", "dct_matrix"]


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D`` (n x n, float64): ``D @ x == dct(x, norm="ortho")``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    d[0] /= np.sqrt(2.0)
    return d


def check_nhwc_shape(layer_name: str, input_shape, multiple: int, what: str) -> tf.TensorShape:
    """Validate an NHWC shape with static H, W, C where H and W are multiples of ``multiple``."""
    shape = tf.TensorShape(input_shape)
    shown = tuple(shape.as_list()) if shape.rank is not None else "<unknown rank>"
    if shape.rank != 4:
        raise ValueError(f"{layer_name} expects NHWC input (batch, H, W, C); got shape {shown}.")
    _, h, w, c = shape.as_list()
    if h is None or w is None or c is None:
        raise ValueError(f"{layer_name} needs static H, W and C; got shape {shown}.")
    if h % multiple or w % multiple:
        raise ValueError(
            f"{layer_name} needs H and W that are multiples of {multiple} ({what}); "
            f"got shape {shown}. Pad the image to a multiple of {multiple} first."
        )
    return shape


def _along_axis(x: tf.Tensor, matrix: np.ndarray, axis: int) -> tf.Tensor:
    """Multiply every length-b block along ``axis`` (1 = H, 2 = W) of NHWC ``x`` by ``matrix``.

    The tensor is viewed as (N, b, R) with the block index in the middle, moved
    last, and multiplied as a 2-D matmul (a TFLite FULLY_CONNECTED).
    """
    b = matrix.shape[0]
    _, h, w, c = x.shape.as_list()
    if axis == 1:
        view = (-1, b, w * c)
    else:
        view = (-1, b, c)
    y = tf.reshape(x, view)
    y = tf.transpose(y, (0, 2, 1))
    rest = y.shape[1]
    y = tf.reshape(y, (-1, b))
    y = tf.matmul(y, tf.constant(matrix.T, dtype=x.dtype))
    y = tf.reshape(y, (-1, rest, b))
    y = tf.transpose(y, (0, 2, 1))
    return tf.reshape(y, (-1, h, w, c))


class _BlockTransform(tf.keras.layers.Layer):
    """Shared code of DCT2D and IDCT2D: a separable per-block matrix applied along H and W."""

    _inverse = False

    def __init__(self, block_size: int = 8, **kwargs):
        super().__init__(**kwargs)
        if int(block_size) != block_size or block_size < 1:
            raise ValueError(
                f"{type(self).__name__}: block_size must be a positive integer; got {block_size!r}."
            )
        self.block_size = int(block_size)
        d = dct_matrix(self.block_size)
        # The inverse of an orthonormal matrix is its transpose.
        self._matrix = (d.T if self._inverse else d).astype(np.float32)

    def build(self, input_shape):
        check_nhwc_shape(type(self).__name__, input_shape, self.block_size, "the block size")
        super().build(input_shape)

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs, dtype=self.compute_dtype)
        check_nhwc_shape(type(self).__name__, x.shape, self.block_size, "the block size")
        x = _along_axis(x, self._matrix, axis=1)
        return _along_axis(x, self._matrix, axis=2)

    def compute_output_shape(self, input_shape):
        return check_nhwc_shape(type(self).__name__, input_shape, self.block_size, "the block size")

    def get_config(self):
        config = super().get_config()
        config.update({"block_size": self.block_size})
        return config


@tf.keras.utils.register_keras_serializable(package="keras_codec")
class DCT2D(_BlockTransform):
    """Orthonormal blockwise 2-D DCT-II, in place (output shape == input shape).

    Each ``block_size`` x ``block_size`` block of each channel of an NHWC
    tensor becomes ``scipy.fft.dctn(block, norm="ortho")``. H and W must be
    multiples of ``block_size``.
    """

    _inverse = False


@tf.keras.utils.register_keras_serializable(package="keras_codec")
class IDCT2D(_BlockTransform):
    """Exact inverse of :class:`DCT2D` (blockwise orthonormal DCT-III)."""

    _inverse = True
