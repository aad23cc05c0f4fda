"""Learned lifting refinement of the wavelet transform: a predict step from each level's low band.

After level i of the fixed lifting DWT splits LL_{i-1} into LL_i and the details D_i
(H, V, D), one more lifting step takes from the details what a small CNN predicts from LL_i:

    analysis:   D_i' = D_i - P_i(LL_i)          synthesis:  D_i = D_i' + P_i(LL_i)

Any P_i keeps the transform exactly invertible (it is a lifting step), and the last layer of
every P_i starts at zero, so an untrained refinement is exactly the wavelet. The decoder
evaluates P_i on its own reconstruction of LL_i, the encoder on the original: training runs
the same open loop, so the model learns predictions that survive quantization.

P_i sees LL_i / 2^i (the normalized image at that scale) times INPUT_GAIN through zero-mean
first kernels (blind to the local level) and its output is multiplied back by 2^i / INPUT_GAIN.
Every level has its own weights; levels a small tile never reaches stay unused.

The same predictor runs in three places, with the same weights (`refine.npz`, `w0`, `w1`, ...
in `get_weights()` order): this Keras layer (training and the workstation coder), the TFLite
graphs (export; the encoder's), and edge_runtime.refine: an integer version of the network that the
edge decoders and the error-bounded mode's exact base run, the same bits on every CPU.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_codec.layers import DWT2D, IDWT2D
from keras_codec.models.wavelet import ZeroMeanConv2D, load_weights, save_weights

from edge_runtime.refine import INPUT_GAIN, REFINE_FILE


def level_channels(channels, max_levels: int) -> list:
    """The predictors' widths per level, finest first: one int for every level, or a sequence of one per level
    (the finest level runs on three quarters of the predictors' pixels: narrowing it saves the most time)."""
    widths = [int(channels)] * int(max_levels) if isinstance(channels, (int, np.integer)) else [int(c) for c in channels]
    if len(widths) != int(max_levels) or min(widths, default=0) < 1:
        raise ValueError(f"refinement channels {channels!r}: give one positive width, or one per level "
                         f"({max_levels} levels, finest first)")
    return widths


def _plain_channels(channels):
    """As recorded in a manifest or a config: an int, or a list of ints."""
    return int(channels) if isinstance(channels, (int, np.integer)) else [int(c) for c in channels]


def refine_macs(channels, layers: int, kernel: int = 3) -> int:
    """Multiply-accumulates per decoded pixel: level i's predictor runs on 4^-i of the pixels (`channels`: one width,
    whatever the levels, or one per level)."""
    k2 = kernel * kernel

    def per_ll(c: int) -> int:
        return k2 * c + (layers - 2) * k2 * c * c + k2 * c * 3

    if isinstance(channels, (int, np.integer)):
        return int(np.ceil(per_ll(int(channels)) / 3.0))  # sum over levels of 4^-i < 1/3
    return int(np.ceil(sum(per_ll(int(c)) * 4.0 ** -(i + 1) for i, c in enumerate(channels))))


@tf.keras.utils.register_keras_serializable(package="keras_codec")
class DetailPredictor(tf.keras.layers.Layer):
    """P_i: LL_i (B, h, w, 1) -> predicted details (B, h, w, 3); zero at initialization."""

    def __init__(self, channels: int = 8, layers: int = 3, level: int = 1, **kwargs):
        super().__init__(**kwargs)
        if layers < 2:
            raise ValueError(f"a detail predictor needs at least 2 conv layers, got {layers}")
        self.channels, self.n_layers, self.level = int(channels), int(layers), int(level)
        self.conv_in = ZeroMeanConv2D(self.channels, 3, padding="same", activation="relu", name="conv0")
        self.hidden = [tf.keras.layers.Conv2D(self.channels, 3, padding="same", activation="relu", name=f"conv{i}")
                       for i in range(1, self.n_layers - 1)]
        self.conv_out = tf.keras.layers.Conv2D(3, 3, padding="same", kernel_initializer="zeros",
                                               bias_initializer="zeros", name="out")

    def call(self, ll):
        g = float(2.0 ** self.level)
        h = self.conv_in(ll * (INPUT_GAIN / g))
        for layer in self.hidden:
            h = layer(h)
        return self.conv_out(h) * (g / INPUT_GAIN)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "layers": self.n_layers, "level": self.level}


@tf.keras.utils.register_keras_serializable(package="keras_codec")
class LiftingRefinement(tf.keras.layers.Layer):
    """The refined transform pair: `analysis(x, levels)` and `synthesis(bands, levels)`, DWT2D's band layout."""

    def __init__(self, wavelet: str = "cdf97", max_levels: int = 7, mode: str = "symmetric", channels=8,
                 layers: int = 3, **kwargs):
        """`channels`: the predictors' width, one for every level or one per level (level_channels)."""
        super().__init__(**kwargs)
        self.wavelet, self.max_levels, self.mode = wavelet, int(max_levels), mode
        self.channels, self.n_layers = _plain_channels(channels), int(layers)
        self.dwt1 = DWT2D(wavelet, 1, mode, name="dwt1")
        self.idwt1 = IDWT2D(wavelet, 1, mode, name="idwt1")
        self.predictors = [DetailPredictor(c, self.n_layers, level=i + 1, name=f"level{i + 1}")
                           for i, c in enumerate(level_channels(channels, self.max_levels))]

    def build(self, input_shape=None):
        for p in self.predictors:
            p.build((None, None, None, 1))
            for layer in [p.conv_in, *p.hidden, p.conv_out]:
                if not layer.built:
                    layer.build((None, None, None, p.channels if layer is not p.conv_in else 1))
        super().build(input_shape)

    def _check_levels(self, levels: int):
        if not 1 <= levels <= self.max_levels:
            raise ValueError(f"the refinement has predictors for 1..{self.max_levels} levels, asked for {levels}")

    def analysis(self, x, levels: int) -> list:
        self._check_levels(levels)
        details, ll = [], x
        for i in range(levels):
            ll, d = self.dwt1(ll)
            details.append(d - self.predictors[i](ll))
        return [ll] + details[::-1]

    def synthesis(self, bands, levels: int):
        self._check_levels(levels)
        ll = bands[0]
        for k in range(levels):
            i = levels - 1 - k
            ll = self.idwt1([ll, bands[1 + k] + self.predictors[i](ll)])
        return ll

    def call(self, x, levels: int | None = None):
        """Analysis then synthesis (identity up to float rounding): lets Keras build the weights."""
        levels = self.max_levels if levels is None else levels
        return self.synthesis(self.analysis(x, levels), levels)

    def get_config(self):
        return {**super().get_config(), "wavelet": self.wavelet, "max_levels": self.max_levels, "mode": self.mode,
                "channels": self.channels, "layers": self.n_layers}


def build_refinement(wavelet: str, max_levels: int, mode: str, channels, layers: int = 3) -> LiftingRefinement:
    r = LiftingRefinement(wavelet, max_levels, mode, channels, layers, name="refine")
    r.build()
    return r


def refine_arch(channels, layers: int, wavelet: str, max_levels: int) -> dict:
    """The architecture dict recorded in a bundle manifest (`refine`); `channels` one width or one per level."""
    level_channels(channels, max_levels)
    return {"kind": "ll_detail_predictor", "channels": _plain_channels(channels), "layers": int(layers), "kernel": 3,
            "wavelet": wavelet, "max_levels": int(max_levels), "input_gain": INPUT_GAIN,
            "macs_per_pixel": refine_macs(channels, layers)}


def save_refinement(refine: LiftingRefinement, path) -> None:
    """Weights as a numpy archive (models.wavelet.save_weights): reloads bit for bit."""
    save_weights(refine, path)


def load_refinement(bundle, wavelet: str | None = None) -> LiftingRefinement | None:
    """The bundle's refinement (manifest `refine`, file refine.npz) for transform `wavelet`, or None."""
    entry = bundle.manifest.get("refine")
    if not entry or (wavelet is not None and wavelet != entry["wavelet"]):
        return None
    path = bundle.path / entry.get("file", REFINE_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{bundle.path}: the manifest lists a transform refinement but {path.name} is missing")
    mode = bundle.manifest["codec"].get("mode", "symmetric")
    r = build_refinement(entry["wavelet"], entry["max_levels"], mode, entry["channels"], entry["layers"])
    r.set_weights(load_weights(path))
    return r
