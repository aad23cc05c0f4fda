"""The int8 post-filter: ``postfilter.tflite``, a full-integer graph run after the float decoder graph.

Int8 weights and activations, int32 biases, described by the manifest's ``tflite.postfilter_int8``
entry; its input and output boundary is numpy in ``edge_runtime.tflite_runner`` (module docstring
there). The filter is rewritten exactly (:func:`keras_codec.models.wavelet.postfilter_integer_form`)
so that it reads the differences of plane/step, whose range is small, instead of the plane (up to
1/step ≈ 240 steps, hopeless in 8 bits). Activation ranges come from a representative set drawn from
the corpus train split (:func:`representative_planes`: planes as the decoder hands them to the filter,
at several qualities), clipped at the 99.999th percentile. Scales, weights and biases are then set so
that every requantization is exact up to an unambiguous rounding (:func:`_exact_requantization`),
which makes XNNPACK and the reference kernels give the same integers; :func:`integer_reference`
checks it.

The lifting transforms are not quantized: they are not learned, and an 8-bit synthesis cannot be an
exact inverse. Measured on the test split with the default bundle
(:func:`export.verify.transform_quantization_ceiling`), the inverse DWT converted to full int8
reaches only 7.5-25 dB even on exact coefficients, and int16x8 (activations int16) 29-71 dB
(CR 29.2, 8-bit pattern 35.3 dB: below the 40-55 dB the evaluation covers).
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from data.corpus import corpus, load as load_corpus_image
from edge_runtime.codec import QUALITY_LEVELS, PlaneCoder, quantizer_step
from edge_runtime.tflite_runner import POSTFILTER_SIGNATURE, postfilter_input
from export.graphs import manifest_transforms
from keras_codec.models.default import bundle_transforms
from keras_codec.models.wavelet import build_postfilter_correction, postfilter_integer_form

__all__ = ["representative_planes", "train_planes", "int8_postfilter", "integer_reference",
           "REPRESENTATIVE_QUALITIES", "REPRESENTATIVE_CROP", "REPRESENTATIVE_PLANES_PER_IMAGE"]

# int8 post-filter. Input: differences of plane/step in 1/32 step (saturating at +-4 steps:
# clipping larger jumps, edges and the zero-padded border, measured slightly better than the
# float filter at fine qualities); log10 step at 120 per decade, so the quality levels (0.1
# decade apart) land on integers 12 apart. Activation ranges: this percentile of the
# representative set (99.999 measured better than the maximum, 99.99 and 99.9 on train planes).
INT8_DIFF_SCALE = 2.0 ** -5
INT8_LOG_STEP_GAIN = 120.0
INT8_PERCENTILE = 99.999
REPRESENTATIVE_QUALITIES = (2, 6, 10, 14, 17, 20, 22)
REPRESENTATIVE_CROP = 256
REPRESENTATIVE_PLANES_PER_IMAGE = 3
CALIBRATION_PATCH = 64


class _Recorder:
    """Keras transforms that remember every plane handed to the synthesis's post-filter, and its step."""

    def __init__(self, transforms):
        self.transforms, self.seen = transforms, []

    def analysis(self, plane, levels):
        return self.transforms.analysis(plane, levels)

    def synthesis(self, bands, levels, step=None):
        y = self.transforms.synthesis(bands, levels)
        self.seen.append((np.asarray(y, np.float32), float(step)))
        return y


def representative_planes(bundle, qualities=REPRESENTATIVE_QUALITIES, crop: int = REPRESENTATIVE_CROP,
                          planes=None, progress=None) -> list:
    """[(plane, step), ...]: what the post-filter sees at decode time, from the corpus train split.

    The first REPRESENTATIVE_PLANES_PER_IMAGE planes (frames x samples) of every train image, or
    the normalized 2-D arrays of `planes`, each cut to its central `crop` x `crop` (after
    normalizing by the whole plane's min and max, as encode_image does), are coded at each
    quality by the bundle's own coder (Keras transforms, the post-filter's transform only,
    rate-distortion optimized quantization) and decoded; the recorded plane is the padded
    inverse-DWT output the post-filter gets.
    """
    entry = bundle.manifest.get("postfilter") or {}
    name = entry.get("wavelet") or manifest_transforms(bundle.manifest)[0]
    recorder = _Recorder(bundle_transforms(bundle, name))
    coder = PlaneCoder({**bundle.manifest["codec"], "transforms": [name]}, bundle.coding, {name: recorder})
    if planes is None:
        planes = train_planes(progress)
    for x in planes:
        x = np.asarray(x, np.float64)
        r0, c0 = max(0, (x.shape[0] - crop) // 2), max(0, (x.shape[1] - crop) // 2)
        x = x[r0:r0 + crop, c0:c0 + crop]
        for q in qualities:
            coder.decode(coder.encode(x, q), *x.shape, q)
    return recorder.seen


def train_planes(progress=None):
    """Normalized planes of the corpus train split (the first few of each image), lazily."""
    for item in corpus("train"):
        img = load_corpus_image(item)
        if progress:
            progress(f"representative set: {item.name}")
        which = [(f, smp) for f in range(img.frames) for smp in range(img.samples)]
        for f, smp in which[:REPRESENTATIVE_PLANES_PER_IMAGE]:
            px = img.pixels[f, :, :, smp].astype(np.float64)
            lo, hi = px.min(), px.max()
            yield (px - lo) / max(hi - lo, 1.0)


def int8_postfilter(pf, planes, progress=None) -> tuple:
    """(postfilter.tflite bytes, its manifest entry) for Keras post-filter `pf` and [(plane, step), ...]."""
    if not planes:
        raise ValueError("the int8 post-filter needs a non-empty representative set")
    # Centred on the quality levels' steps: they map to 126, 114, ..., -126 (integers, no rounding).
    offset = (math.log10(quantizer_step(QUALITY_LEVELS[0])) + math.log10(quantizer_step(QUALITY_LEVELS[-1]))) / 2
    spec = {"diff_scale": INT8_DIFF_SCALE, "log_step_offset": offset, "log_step_gain": INT8_LOG_STEP_GAIN}
    layers = postfilter_integer_form(pf, **spec)
    core = build_postfilter_correction(layers)

    def inputs():
        for y, st in planes:
            yield postfilter_input(y, st, spec)[0].astype(np.float32) * np.float32(INT8_DIFF_SCALE)

    if progress:
        progress(f"int8 post-filter: activation ranges on {len(planes)} representative planes")
    ranges = _activation_ranges(core, inputs(), INT8_PERCENTILE)
    scales, zero_points = _activation_scales(ranges)
    # The converter calibrates on one input shape only: central windows of a common size.
    side = min([CALIBRATION_PATCH + 2] + [min(y.shape) + 2 for y, _ in planes])
    patches = [x[(x.shape[0] - side) // 2:(x.shape[0] - side) // 2 + side,
                 (x.shape[1] - side) // 2:(x.shape[1] - side) // 2 + side].copy() for x in inputs()]
    model = _exact_requantization(_convert_int8(core, patches), layers, scales, zero_points)
    entry = {**spec, "signature": POSTFILTER_SIGNATURE, "input": "diff", "output": "correction",
             "activation_percentile": INT8_PERCENTILE, "activation_ranges": [float(r) for r in ranges],
             "activation_scales": scales, "activation_zero_points": zero_points,
             "rounding": "power-of-two requantization, accumulators 2 mod 4: no rounding ties"}
    return model, entry


def _activation_ranges(core, inputs, percentile: float) -> list:
    """Per convolution of `core`: that percentile of its ReLU output (of |output| for the last)."""
    convs = [l for l in core.layers if isinstance(l, tf.keras.layers.Conv2D)]
    probe = tf.keras.Model(core.input, [c.output for c in convs])
    values = [[] for _ in convs]
    for x in inputs:
        for i, out in enumerate(probe(x[None], training=False)):
            stride = 7 if out.shape[-1] % 7 else 11  # prime to the channel count: every channel is sampled
            v = out.numpy().ravel()[::stride]
            values[i].append(np.abs(v) if i == len(convs) - 1 else v)
    return [float(np.percentile(np.concatenate(v), percentile)) for v in values]


def _snap(x: float, bits: int) -> float:
    """x rounded to `bits` significant bits."""
    m, e = math.frexp(float(x))
    return math.ldexp(round(m * 2 ** bits) / 2 ** bits, e)


def _activation_scales(ranges) -> tuple:
    """Scales (input first) and zero points of the graph's activations for the clipping `ranges`.

    Hidden layers (ReLU) map [0, range] to [-128, 127], the output [-range, range] to
    [-127, 127]. Each scale is the previous one times a ratio of few significant bits, so every
    ratio, and each weight scale ratio·2^-k, is exact in float32 and the multipliers are
    exactly 2^-k (:func:`_exact_requantization`).
    """
    bits = max(2, 23 // len(ranges))
    scales, zero_points = [INT8_DIFF_SCALE], [0]
    for i, r in enumerate(ranges):
        last = i == len(ranges) - 1
        target = max(float(r), 1e-6) / (127.0 if last else 255.0)
        scales.append(scales[-1] * _snap(target / scales[-1], bits))
        zero_points.append(0 if last else -128)
    if any(float(np.float32(s)) != s for s in scales):
        raise RuntimeError(f"activation scales {scales} are not exact float32 numbers")
    return scales, zero_points


def _convert_int8(core, patches) -> bytes:
    """The converter's full-integer graph of `core` (dynamic H, W; signature `postfilter`)."""
    @tf.function(input_signature=[tf.TensorSpec((1, None, None, core.input.shape[-1]), tf.float32, name="diff")])
    @tf.autograph.experimental.do_not_convert
    def correction(diff):
        return {"correction": core(diff, training=False)}

    module = tf.Module()
    module.core = core
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures={POSTFILTER_SIGNATURE: correction.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[POSTFILTER_SIGNATURE])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ({"diff": p[None]} for p in patches)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        return converter.convert()


def _flatbuffer(model: bytes):
    m = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    kinds = [builtin.get(max(c.builtinCode, c.deprecatedBuiltinCode)) for c in m.operatorCodes]
    return m, kinds


def _conv_ops(m, kinds, count: int) -> list:
    if len(m.subgraphs) != 1:
        raise RuntimeError(f"the int8 post-filter has {len(m.subgraphs)} subgraphs, expected 1")
    ops = m.subgraphs[0].operators
    names = [kinds[op.opcodeIndex] for op in ops]
    if names != ["CONV_2D"] * count:
        raise RuntimeError(f"the converter made the int8 post-filter from ops {names}, expected {count} CONV_2D")
    for a, b in zip(ops, ops[1:]):
        if b.inputs[0] != a.outputs[0]:
            raise RuntimeError("the int8 post-filter's convolutions are not a chain")
    return ops


def _set_quantization(tensor, scales, zero_points) -> None:
    q = schema.QuantizationParametersT()
    q.scale = np.asarray(scales, np.float32)
    q.zeroPoint = np.asarray(zero_points, np.int64)
    q.quantizedDimension = 0
    tensor.quantization = q


def _power_of_two_layer(kernel, bias, s_in: float, s_out: float, span: int) -> tuple:
    """Per output channel c: weight scale ratio·2^-k_c (ratio = s_out/s_in), weights rounded to
    multiples of 4, bias rounded to 2 mod 4. Returns (int weights, weight scales, int biases, k).

    The multiplier s_in·s_w/s_out is then exactly 2^-k and the accumulator 2 mod 4, so with
    k >= 3 the product never lies on a rounding tie, nor one step of a 2^-(k-1) grid below one
    (where TFLite's double rounding would round up); every kernel library rounds it alike.
    `span` bounds |input - zero point| (128 or 255): accumulators stay below 2^24, so float
    requantization (XNNPACK) is exact too.
    """
    ratio = s_out / s_in
    cout = kernel.shape[-1]
    wq, sw = np.zeros(kernel.shape, np.int64), np.zeros(cout)
    bq, ks = np.zeros(cout, np.int64), np.zeros(cout, np.int64)
    for c in range(cout):
        peak = float(np.abs(kernel[..., c]).max())
        k = int(np.floor(np.log2(124.0 * ratio / peak))) if peak > 0 else 24
        k = min(k, 24)  # a nearly empty channel needs no finer scale
        if k < 3:
            raise RuntimeError(f"int8 post-filter: output channel {c} needs a multiplier 2^-{k} > 1/8; its weights "
                               f"are too large for the activation scales ({peak:.3g} vs ratio {ratio:.3g})")
        s_w = ratio * 2.0 ** -k
        m = float(np.float32(s_in)) * float(np.float32(s_w)) / float(np.float32(s_out))
        if float(np.float32(s_w)) != s_w or m != 2.0 ** -k:
            raise RuntimeError(f"int8 post-filter: channel {c} multiplier {m!r} is not exactly 2^-{k}")
        wq[..., c] = 4 * np.round(kernel[..., c] / s_w / 4)
        bq[c] = 4 * np.round((float(bias[c]) / (s_in * s_w) - 2) / 4) + 2
        sw[c], ks[c] = s_w, k
    worst = np.abs(wq).reshape(-1, cout).sum(0) * span + np.abs(bq)
    if np.abs(wq).max() > 127 or worst.max() >= 2 ** 24:
        raise RuntimeError("int8 post-filter: weights or accumulators out of range "
                           f"(max |w| {np.abs(wq).max()}, max |acc| {worst.max()})")
    return wq, sw, bq, ks


def _exact_requantization(model: bytes, layers, scales, zero_points) -> bytes:
    """Rewrite the converter's int8 graph: activation scales `scales` (input first), and per
    layer the weights, weight scales and biases of :func:`_power_of_two_layer` from the float
    `layers`. The converter's own calibration only shaped the graph."""
    m, kinds = _flatbuffer(model)
    ops = _conv_ops(m, kinds, len(layers))
    g = m.subgraphs[0]
    _set_quantization(g.tensors[ops[0].inputs[0]], [scales[0]], [zero_points[0]])
    for i, (op, (kernel, bias)) in enumerate(zip(ops, layers)):
        w_t, b_t, o_t = (g.tensors[j] for j in (op.inputs[1], op.inputs[2], op.outputs[0]))
        span = 128 if zero_points[i] == 0 else 255
        wq, sw, bq, _k = _power_of_two_layer(kernel, bias, scales[i], scales[i + 1], span)
        w_tfl = np.transpose(wq, (3, 0, 1, 2))  # TFLite: (out, h, w, in)
        if tuple(w_t.shape) != w_tfl.shape:
            raise RuntimeError(f"int8 post-filter layer {i}: weights {tuple(w_t.shape)}, expected {w_tfl.shape}")
        m.buffers[w_t.buffer].data = np.frombuffer(w_tfl.astype(np.int8).tobytes(), np.uint8)
        _set_quantization(w_t, sw, np.zeros(len(sw)))
        m.buffers[b_t.buffer].data = np.frombuffer(bq.astype(np.int32).tobytes(), np.uint8)
        _set_quantization(b_t, np.float32(scales[i]) * sw.astype(np.float32), np.zeros(len(sw)))
        _set_quantization(o_t, [scales[i + 1]], [zero_points[i + 1]])
    return bytes(flatbuffer_utils.convert_object_to_bytearray(m))


def integer_reference(model, q: np.ndarray) -> np.ndarray:
    """The int8 post-filter evaluated in exact integer arithmetic (numpy int64): input (1, H+2, W+2, 3)
    int8 -> correction (1, H, W, 1) int8.

    Checks on the way that every multiplier is exactly 2^-k (k >= 3) and every accumulator 2 mod 4,
    the conditions under which all kernel libraries must agree with it (rounding here: half up,
    though no tie occurs). `model` is the graph's bytes or path.
    """
    if not isinstance(model, (bytes, bytearray)):
        model = Path(model).read_bytes()
    m, kinds = _flatbuffer(model)
    ops = m.subgraphs[0].operators
    g = m.subgraphs[0]
    x = np.asarray(q, np.int64)[0]
    for op in ops:
        if kinds[op.opcodeIndex] != "CONV_2D":
            raise ValueError(f"integer_reference handles CONV_2D only, got {kinds[op.opcodeIndex]}")
        t_in, t_w, t_b, t_out = (g.tensors[j] for j in (op.inputs[0], op.inputs[1], op.inputs[2], op.outputs[0]))
        w = np.frombuffer(bytes(m.buffers[t_w.buffer].data), np.int8).reshape(t_w.shape).astype(np.int64)
        b = np.frombuffer(bytes(m.buffers[t_b.buffer].data), np.int32).astype(np.int64)
        s_in, zp_in = float(t_in.quantization.scale[0]), int(t_in.quantization.zeroPoint[0])
        s_out, zp_out = float(t_out.quantization.scale[0]), int(t_out.quantization.zeroPoint[0])
        mult = s_in * np.asarray(t_w.quantization.scale, np.float64) / s_out
        k = -np.log2(mult)
        if not np.all(k == np.round(k)) or k.min() < 3:
            raise ValueError(f"multipliers {mult} are not powers of two 2^-k with k >= 3")
        k = k.astype(np.int64)
        xs = x - zp_in
        if op.builtinOptions.padding == schema.Padding.SAME:
            xs = np.pad(xs, ((1, 1), (1, 1), (0, 0)))
        rows, cols = xs.shape[0] - 2, xs.shape[1] - 2
        acc = np.broadcast_to(b, (rows, cols, len(b))).copy()
        for a in range(3):
            for c in range(3):
                acc += np.einsum("hwi,oi->hwo", xs[a:a + rows, c:c + cols], w[:, a, c, :])
        if np.any(acc % 4 != 2):
            raise ValueError("an accumulator is not 2 mod 4")
        y = np.floor_divide(acc + (1 << (k - 1)), 1 << k) + zp_out
        relu = op.builtinOptions.fusedActivationFunction == schema.ActivationFunctionType.RELU
        x = np.clip(y, zp_out if relu else -128, 127)
    return x[None].astype(np.int8)
