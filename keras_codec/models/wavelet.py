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

import numpy as np
import tensorflow as tf

from keras_codec.config import CodecConfig, WaveletConfig
from keras_codec.layers import DWT2D, IDWT2D

from edge_runtime.codec import QUALITY_LEVELS, quantizer_step


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


POSTFILTER_FILE = "postfilter.npz"


def postfilter_arch(config: WaveletConfig, channels: int | None = None, layers: int | None = None,
                    input_scaling: str = "step") -> dict | None:
    """The architecture dict recorded in a bundle manifest (`postfilter.architecture`); None = off."""
    c = int(config.postfilter_channels if channels is None else channels)
    n = int(config.postfilter_layers if layers is None else layers)
    if c <= 0 or n <= 0:
        return None
    if n < 2:
        raise ValueError(f"the post-filter needs at least 2 conv layers, got {n}")
    if input_scaling not in ("step", "none"):
        raise ValueError(f"input_scaling must be 'step' or 'none', got {input_scaling!r}")
    return {"kind": "step_residual_cnn", "channels": c, "layers": n, "kernel": 3,
            "input_scaling": input_scaling, "macs_per_pixel": postfilter_macs(c, n)}


def postfilter_macs(channels: int, layers: int, kernel: int = 3) -> int:
    """Multiply-accumulates per output pixel: 1 -> C -> ... -> C -> 1 convolutions, plus the step scaling."""
    k2 = kernel * kernel
    return k2 * channels + (layers - 2) * k2 * channels * channels + k2 * channels + 2


@tf.keras.utils.register_keras_serializable(package="keras_codec")
class ZeroMeanConv2D(tf.keras.layers.Conv2D):
    """Conv2D whose kernels sum to zero (per output channel): blind to the plane's local mean.

    At export the kernel minus its mean is a plain Conv2D kernel, so it costs nothing extra.
    """

    def effective_kernel(self):
        return self.kernel - tf.reduce_mean(self.kernel, axis=(0, 1, 2), keepdims=True)

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, kernel - tf.reduce_mean(kernel, axis=(0, 1, 2), keepdims=True))


@tf.keras.utils.register_keras_serializable(package="keras_codec")
class StepResidualFilter(tf.keras.layers.Layer):
    """y + s·g(y/s, log10 s): a residual CNN that works in quantizer-step units.

    Inputs: the decoded plane y (B, H, W, 1) in normalized units and log10 of the quantizer
    step s (B, 1). The plane is divided by s (with `input_scaling="step"`), so quantization
    noise is O(1) at every quality; the first kernels sum to zero, so the plane's absolute
    level (up to 1/s ≈ 300 at the finest step) never reaches the ReLUs; log10 s shifts the
    first layer's biases (a step-dependent threshold, free at inference); the correction is
    multiplied back by s. The last layer starts at zero: an untrained filter is the identity.
    """

    def __init__(self, channels: int = 12, layers: int = 3, input_scaling: str = "step", **kwargs):
        super().__init__(**kwargs)
        self.channels, self.n_layers, self.input_scaling = int(channels), int(layers), input_scaling
        first = ZeroMeanConv2D if input_scaling == "step" else tf.keras.layers.Conv2D
        self.conv_in = first(self.channels, 3, padding="same", name="conv0")
        self.step_bias = tf.keras.layers.Dense(self.channels, kernel_initializer="zeros", name="step_bias")
        self.hidden = [tf.keras.layers.Conv2D(self.channels, 3, padding="same", activation="relu", name=f"conv{i}")
                       for i in range(1, self.n_layers - 1)]
        self.conv_out = tf.keras.layers.Conv2D(1, 3, padding="same", kernel_initializer="zeros",
                                               bias_initializer="zeros", name="out")

    def call(self, inputs):
        y, log_step = inputs
        s = tf.reshape(tf.pow(tf.constant(10.0, y.dtype), tf.cast(log_step, y.dtype)), [-1, 1, 1, 1])
        u = y / s if self.input_scaling == "step" else y
        h = self.conv_in(u) + self.step_bias(tf.cast(log_step, y.dtype))[:, None, None, :]
        h = tf.nn.relu(h)
        for layer in self.hidden:
            h = layer(h)
        return y + s * self.conv_out(h)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "layers": self.n_layers,
                "input_scaling": self.input_scaling}


def build_postfilter(config: WaveletConfig, name: str = "postfilter", *, arch: dict | None = None
                     ) -> tf.keras.Model | None:
    """The decoder post-filter, inputs [plane (B, H, W, 1), log10 step (B, 1)] -> plane; None when off.

    `arch` (a bundle manifest's `postfilter.architecture`) overrides the config's width and depth.
    Its last layer starts at zero, so an untrained filter is the identity.
    """
    arch = arch or postfilter_arch(config)
    if arch is None:
        return None
    plane = tf.keras.Input(shape=(None, None, 1), name="plane")
    log_step = tf.keras.Input(shape=(1,), name="log_step")
    out = StepResidualFilter(arch["channels"], arch["layers"], arch.get("input_scaling", "step"),
                             name="filter")([plane, log_step])
    return tf.keras.Model([plane, log_step], out, name=name)


def save_weights(model, path) -> None:
    """Weights as a numpy archive (w0, w1, ... in `model.get_weights()` order): no TensorFlow needed to read."""
    np.savez(path, **{f"w{i}": w for i, w in enumerate(model.get_weights())})


def load_weights(path) -> list:
    """The arrays save_weights wrote, in order (for `model.set_weights`)."""
    with np.load(path) as z:
        return [z[f"w{i}"] for i in range(len(z.files))]


save_postfilter = save_weights


def load_postfilter(bundle, wavelet: str | None = None) -> tf.keras.Model | None:
    """The trained post-filter of a loaded bundle (edge_runtime.bundle.Bundle), or None.

    None when the manifest has no `postfilter` entry or when `wavelet` names another
    transform than the one the filter was trained behind.
    """
    entry = bundle.manifest.get("postfilter")
    if not entry:
        return None
    if wavelet is not None and wavelet != entry.get("wavelet", wavelet):
        return None
    path = bundle.path / entry.get("file", POSTFILTER_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{bundle.path}: the manifest lists a post-filter but {path.name} is missing")
    cfg = CodecConfig.from_dict(bundle.manifest["config"]).wavelet
    model = build_postfilter(cfg, arch=entry["architecture"])
    model.set_weights(load_weights(path))
    return model


def tf_deadzone(x, deadzone: float):
    """edge_runtime.codec.deadzone_quantize in TensorFlow: sign(x)·floor(|x| + 0.5 − deadzone)."""
    return tf.sign(x) * tf.floor(tf.abs(x) + 0.5 - deadzone)


def tf_dequantize(q, recon_bias: float):
    """edge_runtime.codec.dequantize in TensorFlow: sign(q)·(|q| + recon_bias)."""
    return tf.sign(q) * (tf.abs(q) + recon_bias)


def difference_kernel(kernel: np.ndarray) -> np.ndarray:
    """A zero-mean 3x3 kernel (3, 3, 1, C) on a plane u -> the same filter (3, 3, 2, C) on u's differences.

    With dx[i, j] = u[i, j+1] - u[i, j] and dy[i, j] = u[i+1, j] - u[i, j] taken on u zero-padded
    by one sample before and two after each axis, a 'valid' convolution of [dx, dy] with the
    result equals the 'same' (zero-padded) convolution of u with `kernel` at every pixel,
    borders included. It exists because a kernel whose taps sum to zero vanishes at
    z = (1, 1), so it is (1 - z1)·A + (1 - z2)·B; this is the minimum-norm solution. The int8
    post-filter uses it: differences of u = plane/step have a small range, u itself does not.
    """
    kernel = np.asarray(kernel, np.float64)
    if kernel.shape[:3] != (3, 3, 1):
        raise ValueError(f"difference_kernel takes a (3, 3, 1, C) kernel, got {kernel.shape}")
    # Row r of `basis`: the 4x4 footprint on u (offsets -1..2) of one tap of dx or dy.
    basis = []
    for a in range(3):
        for b in range(3):
            for ch in range(2):
                e = np.zeros((4, 4))
                e[a + ch, b + 1 - ch] += 1.0
                e[a, b] -= 1.0
                basis.append(e.ravel())
    basis = np.array(basis).T
    out = np.zeros((3, 3, 2, kernel.shape[-1]))
    for c in range(kernel.shape[-1]):
        target = np.zeros((4, 4))
        target[:3, :3] = kernel[:, :, 0, c]
        if abs(target.sum()) > 1e-6 * max(np.abs(target).max(), 1e-30):
            raise ValueError(f"difference_kernel: channel {c} of the kernel does not sum to zero ({target.sum():.3g})")
        sol = np.linalg.lstsq(basis, target.ravel(), rcond=None)[0]
        out[:, :, :, c] = sol.reshape(3, 3, 2)
    return out.astype(np.float32)


def postfilter_integer_form(model: tf.keras.Model, diff_scale: float, log_step_offset: float,
                            log_step_gain: float) -> list:
    """The post-filter's correction as the int8 graph computes it, in float: [(kernel, bias), ...].

    Input (B, H+2, W+2, 3): the differences of plane/step and the log-step channel of
    `edge_runtime.tflite_runner.postfilter_input`, dequantized (times `diff_scale`). Output:
    the correction g (B, H, W, 1) in quantizer steps; the filtered plane is plane + step·g.
    The first convolution is 'valid' and the others 'same', ReLU after all but the last. The
    step-dependent bias of the first layer enters through channel 2's centre tap. Equal to
    the Keras filter (up to float rounding) while no difference exceeds 128·diff_scale steps.
    """
    layer = next((l for l in model.layers if isinstance(l, StepResidualFilter)), None)
    if layer is None:
        raise ValueError(f"{model.name}: not a post-filter built by build_postfilter (no StepResidualFilter)")
    if layer.input_scaling != "step":
        raise ValueError("the int8 post-filter needs a step-scaled, zero-mean first layer (input_scaling='step'); "
                         f"this one has input_scaling={layer.input_scaling!r}")
    k0 = layer.conv_in.effective_kernel().numpy()
    w_step, b_step = (w.numpy() for w in (layer.step_bias.kernel, layer.step_bias.bias))
    kernel = np.zeros((3, 3, 3, k0.shape[-1]), np.float32)
    kernel[:, :, :2] = difference_kernel(k0)
    kernel[1, 1, 2] = w_step[0] / (float(diff_scale) * float(log_step_gain))
    bias = layer.conv_in.bias.numpy() + b_step + w_step[0] * float(log_step_offset)
    layers = [(kernel, bias.astype(np.float32))]
    layers += [tuple(np.asarray(w, np.float32) for w in h.get_weights()) for h in layer.hidden]
    layers.append(tuple(np.asarray(w, np.float32) for w in layer.conv_out.get_weights()))
    return layers


def build_postfilter_correction(layers: list, name: str = "postfilter_correction") -> tf.keras.Model:
    """Keras model of `postfilter_integer_form`'s layers: (B, H+2, W+2, 3) -> correction (B, H, W, 1)."""
    x_in = tf.keras.Input((None, None, layers[0][0].shape[2]), name="diff")
    x = x_in
    for i, (kernel, bias) in enumerate(layers):
        conv = tf.keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], padding="valid" if i == 0 else "same",
                                      activation=None if i == len(layers) - 1 else "relu", name=f"conv{i}")
        x = conv(x)
        conv.set_weights([kernel, bias])
    return tf.keras.Model(x_in, x, name=name)


def build_functional_codec(config: WaveletConfig, rows: int, cols: int, levels: int,
                           postfilter: tf.keras.Model | None = None, step: float | None = None) -> tf.keras.Model:
    """The whole codec as one Keras functional model on a (rows, cols) plane.

    With `step` None quantization is off and the model is the identity up to float
    precision (exact lifting pair, zero post-filter; a post-filter then gets the finest
    quality's step). With a step it rounds every coefficient to the step grid
    (straight-through gradient), as used in training.
    """
    x_in = tf.keras.Input(shape=(rows, cols, 1), name="plane")
    bands = DWT2D(config.wavelet, levels, config.mode, name="analysis")(x_in)
    if step is not None:
        q = QuantizeST(step, name="quantize")
        bands = [q(b) for b in bands]
    y = IDWT2D(config.wavelet, levels, config.mode, name="synthesis")(bands)
    if postfilter is not None:
        s = step if step is not None else quantizer_step(QUALITY_LEVELS[-1])
        log_step = BatchConstant(float(np.log10(s)), name="log_step")(y)
        y = postfilter([y, log_step])
    return tf.keras.Model(x_in, y, name="default_codec")


@tf.keras.utils.register_keras_serializable(package="keras_codec")
class BatchConstant(tf.keras.layers.Layer):
    """A (batch, 1) tensor filled with `value`, batched like its input."""

    def __init__(self, value: float, **kwargs):
        super().__init__(**kwargs)
        self.value = float(value)

    def call(self, x):
        return tf.fill(tf.stack([tf.shape(x)[0], 1]), tf.constant(self.value, x.dtype))

    def get_config(self):
        return {**super().get_config(), "value": self.value}


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
    """Analysis / synthesis graphs, one per decomposition depth, for planes of any (padded) size.

    With `refine` (a LiftingRefinement) the transform pair is the refined one.
    """

    def __init__(self, config: WaveletConfig, postfilter: tf.keras.Model | None = None, refine=None):
        self.config = config
        self.postfilter = postfilter
        self.refine = refine  # keras_codec.models.refine.LiftingRefinement or None
        self._graphs = {}

    def _analysis(self, levels: int):
        key = ("analysis", levels)
        if key not in self._graphs:
            if self.refine is not None:
                layer = lambda x: self.refine.analysis(x, levels)
            else:
                layer = DWT2D(self.config.wavelet, levels, self.config.mode)
            self._graphs[key] = tf.function(layer, input_signature=[tf.TensorSpec((1, None, None, 1), tf.float32)])
        return self._graphs[key]

    def _synthesis(self, levels: int):
        key = ("synthesis", levels)
        if key not in self._graphs:
            if self.refine is not None:
                layer = lambda bands: self.refine.synthesis(bands, levels)
            else:
                layer = IDWT2D(self.config.wavelet, levels, self.config.mode)
            specs = [tf.TensorSpec((1, None, None, 1), tf.float32)]
            specs += [tf.TensorSpec((1, None, None, 3), tf.float32)] * levels
            specs.append(tf.TensorSpec((1, 1), tf.float32))  # log10 of the quantizer step
            pf = self.postfilter

            def run(*args):
                y = layer(list(args[:-1]))
                return pf([y, args[-1]]) if pf is not None else y

            self._graphs[key] = tf.function(run, input_signature=specs)
        return self._graphs[key]

    def analysis(self, plane: np.ndarray, levels: int) -> list:
        """2-D float plane (already padded) -> [LL, (H, V, D), ...] coarse to fine."""
        out = self._analysis(levels)(tf.constant(plane[None, :, :, None], tf.float32))
        return split_details([o.numpy() for o in out])

    def synthesis(self, bands: list, levels: int, step: float | None = None) -> np.ndarray:
        """Dequantized bands -> plane; the post-filter (if any) needs the quantizer `step`."""
        if self.postfilter is not None and step is None:
            raise ValueError("this WaveletTransforms has a post-filter, which needs the quantizer step: "
                             "call synthesis(bands, levels, step=step)")
        log_step = np.full((1, 1), np.log10(step) if step is not None else 0.0, np.float32)
        y = self._synthesis(levels)(*[tf.constant(b) for b in join_details(bands)],
                                               tf.constant(log_step))
        return y.numpy()[0, :, :, 0]
