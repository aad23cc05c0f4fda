"""The `default` model: a wavelet codec at initialization, refined by what is learned.

Path of one plane (values normalized to [0, 1] with the plane's min and max):
    pad (mirror) to a multiple of 2**L  ->  DWT2D (CDF 9/7 lifting, whole-sample symmetric)
    ->  divide by the quality's step  ->  deadzone quantizer (+ rate-distortion optimized
    lowering toward zero, decided with the exact table of every coefficient)
    ->  integer context model + range coder (edge_runtime.subband_coder)
and back: decode -> dequantize (reconstruction bias) -> IDWT2D -> residual post-filter
(zero-initialized, so an untrained model is exactly the wavelet codec) -> crop -> de-normalize.

One model serves every rate: the quality level scales the quantizer step.
"""
from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from keras_codec.config import WaveletConfig
from keras_codec.layers import DWT2D, IDWT2D

from edge_runtime.codec import (QUALITY_LEVELS, deadzone_quantize, dequantize, levels_for,  # noqa: F401
                                nominal_psnr, padded_shape, quantizer_step)


def split_details(coeffs: list) -> list:
    """[LL (1,h,w,1), details (1,h,w,3), ...] layer outputs -> [LL, (H, V, D), ...] 2-D arrays."""
    out = [np.asarray(coeffs[0])[0, :, :, 0]]
    for d in coeffs[1:]:
        d = np.asarray(d)[0]
        out.append(tuple(d[:, :, i] for i in range(3)))
    return out


def join_details(bands: list) -> list:
    out = [np.asarray(bands[0], np.float32)[None, :, :, None]]
    for trio in bands[1:]:
        out.append(np.stack(trio, axis=-1).astype(np.float32)[None])
    return out


def build_postfilter(config: WaveletConfig, name: str = "postfilter") -> tf.keras.Model | None:
    """Residual CNN on the reconstruction; its last layer starts at zero (identity filter)."""
    if config.postfilter_channels <= 0 or config.postfilter_layers <= 0:
        return None
    x_in = tf.keras.Input(shape=(None, None, 1))
    h = x_in
    for i in range(config.postfilter_layers - 1):
        h = tf.keras.layers.Conv2D(config.postfilter_channels, 3, padding="same", activation="relu",
                                   name=f"{name}_conv{i}")(h)
    r = tf.keras.layers.Conv2D(1, 3, padding="same", kernel_initializer="zeros", bias_initializer="zeros",
                               name=f"{name}_out")(h)
    out = tf.keras.layers.Add(name=f"{name}_add")([x_in, r])
    return tf.keras.Model(x_in, out, name=name)


def build_functional_codec(config: WaveletConfig, rows: int, cols: int, levels: int,
                           postfilter: tf.keras.Model | None = None, step: float | None = None) -> tf.keras.Model:
    """The whole codec as one Keras functional model on a (rows, cols) plane.

    With `step` None quantization is off and the model is the identity up to float
    precision (exact lifting pair, zero post-filter). With a step it rounds every
    coefficient to the step grid (straight-through gradient), as used in training.
    """
    x_in = tf.keras.Input(shape=(rows, cols, 1), name="plane")
    bands = DWT2D(config.wavelet, levels, config.mode, name="analysis")(x_in)
    if step is not None:
        q = QuantizeST(step, name="quantize")
        bands = [q(b) for b in bands]
    y = IDWT2D(config.wavelet, levels, config.mode, name="synthesis")(bands)
    if postfilter is not None:
        y = postfilter(y)
    return tf.keras.Model(x_in, y, name="default_codec")


@tf.keras.utils.register_keras_serializable(package="keras_codec")
class QuantizeST(tf.keras.layers.Layer):
    """Uniform rounding to a step grid with a straight-through gradient."""

    def __init__(self, step: float, **kwargs):
        super().__init__(**kwargs)
        self.step = float(step)

    def call(self, x):
        s = tf.constant(self.step, x.dtype)
        return x + tf.stop_gradient(tf.round(x / s) * s - x)

    def get_config(self):
        return {**super().get_config(), "step": self.step}


class WaveletTransforms:
    """Cached analysis / synthesis graphs per padded shape (static shapes keep TFLite simple)."""

    def __init__(self, config: WaveletConfig, postfilter: tf.keras.Model | None = None):
        self.config = config
        self.postfilter = postfilter

    @functools.lru_cache(maxsize=16)
    def _analysis(self, rows, cols, levels):
        layer = DWT2D(self.config.wavelet, levels, self.config.mode)
        fn = tf.function(lambda x: layer(x), input_signature=[tf.TensorSpec((1, rows, cols, 1), tf.float32)])
        return fn

    @functools.lru_cache(maxsize=16)
    def _synthesis(self, rows, cols, levels):
        layer = IDWT2D(self.config.wavelet, levels, self.config.mode)
        specs = [tf.TensorSpec((1, rows >> levels, cols >> levels, 1), tf.float32)]
        for lv in range(levels, 0, -1):
            specs.append(tf.TensorSpec((1, rows >> lv, cols >> lv, 3), tf.float32))
        pf = self.postfilter

        def run(*bands):
            y = layer(list(bands))
            return pf(y) if pf is not None else y

        return tf.function(run, input_signature=specs)

    def analysis(self, plane: np.ndarray, levels: int) -> list:
        """2-D float plane (already padded) -> [LL, (H, V, D), ...] coarse to fine."""
        rows, cols = plane.shape
        out = self._analysis(rows, cols, levels)(tf.constant(plane[None, :, :, None], tf.float32))
        return split_details([o.numpy() for o in out])

    def synthesis(self, bands: list, levels: int) -> np.ndarray:
        rows, cols = bands[0].shape[0] << levels, bands[0].shape[1] << levels
        y = self._synthesis(rows, cols, levels)(*[tf.constant(b) for b in join_details(bands)])
        return y.numpy()[0, :, :, 0]
