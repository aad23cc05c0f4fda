"""Export a bundle's wavelet transforms to TFLite: ``encoder.tflite`` and ``decoder.tflite``
(and, quantized to int8, the post-filter as ``postfilter.tflite``).

Each file holds one signature per (transform, levels) pair the codec can use:
every transform in the manifest's ``codec["transforms"]`` (or its one
``codec["wavelet"]``) and every level count 1..``codec["levels"]``
(``edge_runtime.codec.levels_for`` picks fewer levels for small tiles). The
signature key is ``f"{transform}_L{levels}"``, e.g. ``cdf97_L5``; signatures are
written transform by transform in manifest order, levels ascending.

H and W are dynamic: the graphs are traced with ``(1, None, None, 1)`` planes, so
one signature runs at any padded tile size (a multiple of ``2**levels``); the
runner resizes the inputs and re-allocates before invoking.

Tensors, by name; names sort in the order given here:

- encoder ``{t}_L{L}``: input ``plane`` (1, H, W, 1) float32; outputs ``band_00``
  = LL (1, H/2^L, W/2^L, 1), then ``band_01`` .. ``band_{L:02d}`` = details
  coarse to fine, ``band_k`` of shape (1, H/2^(L-k+1), W/2^(L-k+1), 3) with
  channels (H, V, D) as ``pywt.wavedec2`` orders them.
- decoder ``{t}_L{L}``: inputs ``band_00`` .. ``band_{L:02d}`` (as the encoder
  outputs them) and ``step`` (1,) float32, the quantizer step in normalized
  units; output ``plane`` (1, H, W, 1). In float32 and float16 the decoder
  includes the bundle's post-filter when the manifest has one for that transform
  (it uses ``step``); otherwise (and in int8, where the post-filter is its own
  graph) ``step`` is unused but still an input, so the signature is stable.

The manifest gets a ``tflite`` section describing this (files, keys, tensor
order, quantization, post-filter per transform). Adding .tflite files changes
the bundle's model id (``edge_runtime.bundle.model_id_of`` hashes them).

Quantization (the encoder and every lifting transform always stay float32):

- ``float32``;
- ``float16`` stores the post-filter's conv and dense kernels in float16 (see
  :func:`_weights_to_float16`: the lifting transform's scalar constants stay float32);
- ``int8``: the decoder graph is the inverse DWT alone and the post-filter becomes a
  separate full-integer graph, ``postfilter.tflite`` (int8 weights and activations, int32
  biases), described by the manifest's ``tflite.postfilter_int8`` entry; its input and
  output boundary is numpy in ``edge_runtime.tflite_runner`` (module docstring there).
  The filter is rewritten exactly (:func:`keras_codec.models.wavelet.postfilter_integer_form`)
  so that it reads the differences of plane/step, whose range is small, instead of the
  plane (up to 1/step ≈ 240 steps, hopeless in 8 bits). Activation ranges come from a
  representative set drawn from the corpus train split (:func:`representative_planes`:
  planes as the decoder hands them to the filter, at several qualities), clipped at the
  99.999th percentile. Scales, weights and biases are then set so that every requantization
  is exact up to an unambiguous rounding (:func:`_exact_requantization`), which makes XNNPACK
  and the reference kernels give the same integers; :func:`integer_reference` checks it.
  The lifting transforms are not quantized: they are not learned, and an 8-bit synthesis
  cannot be an exact inverse. Measured on the test split with the default bundle
  (:func:`transform_quantization_ceiling`), the inverse DWT converted to full int8 reaches
  only 7.5-25 dB even on exact coefficients, and int16x8 (activations int16) 29-71 dB
  (CR 29.2, 8-bit pattern 35.3 dB: below the 40-55 dB the evaluation covers).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from edge_runtime.tflite_runner import POSTFILTER_FILE, POSTFILTER_SIGNATURE

__all__ = ["export_transforms", "verify_export", "run_signature", "signature_key", "representative_planes",
           "integer_reference", "test_split_report", "bd_rate_report", "bundle_sizes",
           "transform_quantization_ceiling", "quantization_report", "QUANT_MODES"]

QUANT_MODES = ("float32", "float16", "int8")
ENCODER_FILE = "encoder.tflite"
DECODER_FILE = "decoder.tflite"
TFLITE_SECTION_FORMAT = 1

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


def signature_key(transform: str, levels: int) -> str:
    return f"{transform}_L{int(levels)}"


def _band_name(i: int) -> str:
    return f"band_{i:02d}"


def _transform_names(manifest: dict) -> list:
    codec = manifest.get("codec", {})
    names = codec.get("transforms") or [codec.get("wavelet") or manifest["config"]["wavelet"]["wavelet"]]
    return list(names)


def _max_levels(manifest: dict) -> int:
    codec = manifest.get("codec", {})
    return int(codec.get("levels", manifest["config"]["wavelet"]["levels"]))


def _wavelet_config(manifest: dict, name: str):
    """The WaveletConfig of transform `name`, as `keras_codec.models.default.DefaultCodec.from_bundle` builds it."""
    from keras_codec.config import CodecConfig

    return dataclasses.replace(CodecConfig.from_dict(manifest["config"]).wavelet, wavelet=name)


def _postfilter_for(bundle, name: str):
    from keras_codec.models.wavelet import load_postfilter

    return load_postfilter(bundle, wavelet=name)


def _refinement_for(bundle, name: str):
    from keras_codec.models.refine import load_refinement

    return load_refinement(bundle, wavelet=name)


def _encoder_fn(cfg, levels: int, refine=None):
    import tensorflow as tf

    from keras_codec.layers import DWT2D

    layer = DWT2D(cfg.wavelet, levels, cfg.mode)
    if refine is not None:
        layer = lambda x: refine.analysis(x, levels)  # noqa: E731

    @tf.function(input_signature=[tf.TensorSpec((1, None, None, 1), tf.float32, name="plane")])
    def encode(plane):
        return {_band_name(i): t for i, t in enumerate(layer(plane))}

    return encode, layer


def _decoder_fn(cfg, levels: int, postfilter, refine=None):
    import tensorflow as tf

    from keras_codec.layers import IDWT2D

    layer = IDWT2D(cfg.wavelet, levels, cfg.mode)
    if refine is not None:
        layer = lambda bands: refine.synthesis(bands, levels)  # noqa: E731
    specs = [tf.TensorSpec((1, None, None, 1), tf.float32, name=_band_name(0))]
    specs += [tf.TensorSpec((1, None, None, 3), tf.float32, name=_band_name(i)) for i in range(1, levels + 1)]
    specs.append(tf.TensorSpec((1,), tf.float32, name="step"))

    @tf.function(input_signature=specs)
    def decode(*args):
        y = layer(list(args[:-1]))
        if postfilter is not None:
            log_step = tf.reshape(tf.math.log(args[-1]) * (1.0 / math.log(10.0)), (1, 1))
            y = postfilter([y, log_step], training=False)
        return {"plane": y}

    return decode, layer


def _convert(functions: dict, trackables: list, quant: str) -> bytes:
    """{key: tf.function} -> one TFLite flatbuffer with a signature per key, builtin ops only.

    Goes through a SavedModel so the signature keys are exactly ours.
    """
    import tensorflow as tf

    module = tf.Module()
    module.keep = list(trackables)  # the post-filters and refinements, whose variables the functions capture
    concrete = {k: f.get_concrete_function() for k, f in functions.items()}
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures=concrete)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(concrete))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        model = converter.convert()
    return _weights_to_float16(model) if quant == "float16" else model


_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


def _weights_to_float16(model: bytes) -> bytes:
    """Store the kernels of conv / fully connected ops in float16, each followed by a DEQUANTIZE.

    The converter's own float16 mode (``supported_types=[tf.float16]``) would also round the
    lifting transform's scalar constants (sqrt(2), the CDF 9/7 lifting coefficients) to
    float16: measured 5e-4 max error on a bare Haar synthesis in [0, 1] units, about 30 grey
    levels of a 16-bit image. So only the kernels (operand 1 of those ops) are converted
    here; everything else, biases included, stays float32.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    m = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}

    def op_name(code):
        return builtin.get(max(code.builtinCode, code.deprecatedBuiltinCode))

    weight_codes = {i for i, c in enumerate(m.operatorCodes) if op_name(c) in _WEIGHT_OPS}
    if not weight_codes:
        return model
    dequantize = next((i for i, c in enumerate(m.operatorCodes) if op_name(c) == "DEQUANTIZE"), None)
    if dequantize is None:
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.DEQUANTIZE
        code.version = 3  # float16 input
        m.operatorCodes.append(code)
        dequantize = len(m.operatorCodes) - 1
    half = {}  # float32 buffer index -> float16 buffer index (buffers can be shared)
    for g in m.subgraphs:
        new_ops = []
        for op in g.operators:
            if op.opcodeIndex in weight_codes and len(op.inputs) > 1 and op.inputs[1] >= 0:
                t = g.tensors[op.inputs[1]]
                if t.type == schema.TensorType.FLOAT32 and t.buffer > 0 and m.buffers[t.buffer].data is not None:
                    if t.buffer not in half:
                        w = np.frombuffer(bytes(m.buffers[t.buffer].data), np.float32).astype(np.float16)
                        buf = schema.BufferT()
                        buf.data = np.frombuffer(w.tobytes(), np.uint8)
                        m.buffers.append(buf)
                        half[t.buffer] = len(m.buffers) - 1
                    t16 = schema.TensorT()
                    t16.shape, t16.shapeSignature = t.shape, t.shapeSignature
                    t16.type, t16.buffer = schema.TensorType.FLOAT16, half[t.buffer]
                    t16.name = (t.name or b"") + b"_float16" if isinstance(t.name, bytes) else f"{t.name}_float16"
                    g.tensors.append(t16)
                    dq = schema.OperatorT()
                    dq.opcodeIndex, dq.inputs, dq.outputs = dequantize, [len(g.tensors) - 1], [op.inputs[1]]
                    new_ops.append(dq)
                    t.buffer = 0  # now computed by the DEQUANTIZE
            new_ops.append(op)
        g.operators = new_ops
    # Float32 buffers no longer referenced are emptied so the file shrinks.
    used = {t.buffer for g in m.subgraphs for t in g.tensors}
    for i in half:
        if i not in used:
            m.buffers[i].data = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(m))


def _tensor_doc(levels: int) -> dict:
    bands = [_band_name(i) for i in range(levels + 1)]
    return {"encoder_inputs": ["plane"], "encoder_outputs": bands,
            "decoder_inputs": bands + ["step"], "decoder_outputs": ["plane"]}


def export_transforms(bundle_dir, out_dir=None, quant: str = "float32", representative=None,
                      progress=None) -> dict:
    """Write ``encoder.tflite`` and ``decoder.tflite`` (and for int8 ``postfilter.tflite``; see
    the module docstring) and the manifest's ``tflite`` section; return that section.

    With ``out_dir`` the bundle is copied there first and the source is left untouched.
    `representative` (int8 only): the post-filter's representative set as [(plane, step), ...]
    instead of :func:`representative_planes` on the train split. `progress` gets one line per
    slow step (int8).
    """
    from edge_runtime.bundle import load_bundle

    if quant not in QUANT_MODES:
        raise ValueError(f"unknown quantization {quant!r}; choose one of {QUANT_MODES}")
    bundle_dir = Path(bundle_dir)
    if out_dir is not None and Path(out_dir).resolve() != bundle_dir.resolve():
        out_dir = Path(out_dir)
        shutil.copytree(bundle_dir, out_dir, dirs_exist_ok=True)
    else:
        out_dir = bundle_dir
    bundle = load_bundle(out_dir)
    manifest = bundle.manifest
    names = _transform_names(manifest)
    max_levels = _max_levels(manifest)

    encoders, decoders, trackables, signatures, postfilters, models, refines = {}, {}, [], {}, {}, {}, []
    for name in names:
        cfg = _wavelet_config(manifest, name)
        pf = _postfilter_for(bundle, name)
        postfilters[name] = pf is not None
        if pf is not None:
            models[name] = pf
        if pf is not None and quant != "int8":
            trackables.append(pf)
        rf = _refinement_for(bundle, name)
        if rf is not None:
            refines.append(rf)
        for levels in range(1, max_levels + 1):
            key = signature_key(name, levels)
            encoders[key], _ = _encoder_fn(cfg, levels, rf)
            # int8: the decoder graph is the float inverse DWT alone; the filter is postfilter.tflite.
            decoders[key], _ = _decoder_fn(cfg, levels, None if quant == "int8" else pf, rf)
            signatures[key] = {"transform": name, "levels": levels, "mode": cfg.mode, **_tensor_doc(levels)}

    int8_entry = int8_model = None
    if quant == "int8":
        if not models:
            raise ValueError(f"{bundle_dir}: int8 quantizes the learned post-filter and this bundle has none; "
                             "export it with --quant float32 (the lifting transforms are float32 in every mode)")
        (name, pf), = models.items()
        if representative is None:
            planes = representative_planes(bundle, progress=progress)
            source = {"split": "train", "qualities": list(REPRESENTATIVE_QUALITIES), "crop": REPRESENTATIVE_CROP,
                      "planes_per_image": REPRESENTATIVE_PLANES_PER_IMAGE, "planes": len(planes)}
        else:
            planes = [(np.asarray(y, np.float32), float(st)) for y, st in representative]
            source = {"given": len(planes)}
        int8_model, int8_entry = _int8_postfilter(pf, planes, progress=progress)
        int8_entry = {"file": POSTFILTER_FILE, "transform": name, **int8_entry, "representative": source}

    (out_dir / ENCODER_FILE).write_bytes(_convert(encoders, refines, "float32"))
    (out_dir / DECODER_FILE).write_bytes(
        _convert(decoders, trackables + refines, quant if quant == "float16" and any(postfilters.values()) else "float32"))
    if int8_model is not None:
        (out_dir / POSTFILTER_FILE).write_bytes(int8_model)
    elif (out_dir / POSTFILTER_FILE).exists():
        (out_dir / POSTFILTER_FILE).unlink()  # a stale int8 filter would still count in the model id

    section = {
        "format": TFLITE_SECTION_FORMAT,
        "encoder": ENCODER_FILE,
        "decoder": DECODER_FILE,
        "quantization": quant,
        "quantization_note": "encoder always float32; the decoder's lifting transform stays float32, "
                             "only post-filter weights follow `quantization`",
        "postfilter": postfilters,
        "signature_order": list(signatures),
        "signatures": signatures,
        "shapes": "batch 1, H and W dynamic (multiples of 2**levels): plane (1,H,W,1); band_00 = LL "
                  "(1,H/2^L,W/2^L,1); band_k (k>=1) = details (H,V,D) of level L-k+1, "
                  "(1,H/2^(L-k+1),W/2^(L-k+1),3); step (1,) float32 quantizer step",
        "tensor_order": "by name: inputs and outputs sorted by name are in the order listed",
    }
    if int8_entry is not None:
        section["quantization_note"] = (
            "encoder and the decoder's lifting transform float32; the post-filter is the full-integer graph "
            f"{POSTFILTER_FILE} (postfilter_int8), run after the decoder graph, whose step input it then uses")
        section["postfilter_int8"] = int8_entry
    manifest = {**manifest, "tflite": section}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return section


# --- int8 post-filter --------------------------------------------------------


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
    from edge_runtime.codec import PlaneCoder
    from keras_codec.models.default import bundle_transforms

    entry = bundle.manifest.get("postfilter") or {}
    name = entry.get("wavelet") or _transform_names(bundle.manifest)[0]
    recorder = _Recorder(bundle_transforms(bundle, name))
    coder = PlaneCoder({**bundle.manifest["codec"], "transforms": [name]}, bundle.coding, {name: recorder})
    if planes is None:
        planes = _train_planes(progress)
    for x in planes:
        x = np.asarray(x, np.float64)
        r0, c0 = max(0, (x.shape[0] - crop) // 2), max(0, (x.shape[1] - crop) // 2)
        x = x[r0:r0 + crop, c0:c0 + crop]
        for q in qualities:
            coder.decode(coder.encode(x, q), *x.shape, q)
    return recorder.seen


def _train_planes(progress=None):
    """Normalized planes of the corpus train split (the first few of each image), lazily."""
    from data.corpus import corpus, load

    for item in corpus("train"):
        img = load(item)
        if progress:
            progress(f"representative set: {item.name}")
        which = [(f, smp) for f in range(img.frames) for smp in range(img.samples)]
        for f, smp in which[:REPRESENTATIVE_PLANES_PER_IMAGE]:
            px = img.pixels[f, :, :, smp].astype(np.float64)
            lo, hi = px.min(), px.max()
            yield (px - lo) / max(hi - lo, 1.0)


def _int8_postfilter(pf, planes, progress=None) -> tuple:
    """(postfilter.tflite bytes, its manifest entry) for Keras post-filter `pf` and [(plane, step), ...]."""
    from edge_runtime.codec import QUALITY_LEVELS, quantizer_step
    from edge_runtime.tflite_runner import postfilter_input
    from keras_codec.models.wavelet import build_postfilter_correction, postfilter_integer_form

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
    import tensorflow as tf

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
    import tensorflow as tf

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
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

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
    from tensorflow.lite.python import schema_py_generated as schema

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
    from tensorflow.lite.tools import flatbuffer_utils

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
    from tensorflow.lite.python import schema_py_generated as schema

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


# --- Running ---------------------------------------------------------------


def _interpreter(model, num_threads: int = 1):
    from export.tflite_utils import _interpreter_class

    if hasattr(model, "get_signature_runner"):
        return model
    Interpreter = _interpreter_class()
    if isinstance(model, (bytes, bytearray)):
        return Interpreter(model_content=bytes(model), num_threads=num_threads)
    return Interpreter(model_path=str(model), num_threads=num_threads)


def run_signature(model, key: str, inputs, num_threads: int = 1) -> list:
    """Run signature `key` of a TFLite model (bytes, a path or an Interpreter) once.

    `inputs` is a dict by input name or a list in sorted-name order; the inputs are
    resized as needed (dynamic H, W). Returns the outputs in sorted-name order.
    """
    interpreter = _interpreter(model, num_threads)
    signatures = interpreter.get_signature_list()
    if key not in signatures:
        raise ValueError(f"the model has no signature {key!r}; it has {sorted(signatures)}")
    names = sorted(signatures[key]["inputs"])
    if not isinstance(inputs, dict):
        inputs = list(inputs)
        if len(inputs) != len(names):
            raise ValueError(f"signature {key!r} takes {len(names)} inputs {names}; got {len(inputs)}")
        inputs = dict(zip(names, inputs))
    if sorted(inputs) != names:
        raise ValueError(f"signature {key!r} takes inputs {names}; got {sorted(inputs)}")
    runner = interpreter.get_signature_runner(key)
    details = runner.get_input_details()
    feed = {n: np.ascontiguousarray(x, dtype=details[n]["dtype"]) for n, x in inputs.items()}
    results = runner(**feed)
    return [np.array(results[n]) for n in sorted(signatures[key]["outputs"])]


def op_names(model) -> set:
    """The op names used by a TFLite model (builtins are upper case, e.g. ``STRIDED_SLICE``)."""
    interpreter = _interpreter(model)
    return {op["op_name"] for op in interpreter._get_ops_details()}


# --- Verification ----------------------------------------------------------


def verify_export(bundle_dir, shapes=((64, 96), (128, 128)), seed: int = 0, step: float | None = None,
                  num_threads: int = 1) -> dict:
    """TFLite vs Keras (`keras_codec.models.wavelet.WaveletTransforms`) on random planes.

    For every signature: analysis of a random plane per shape (each shape rounded up to a
    multiple of 2**levels) through ``encoder.tflite`` and through Keras, and synthesis of
    the Keras bands through ``decoder.tflite`` and through Keras (with the post-filter, at
    quantizer step `step`, default the finest quality's). Returns
    ``{key: {"encoder": max abs diff, "decoder": max abs diff}}`` and the overall maximum
    under ``"max_abs_diff"``.

    int8 bundles: ``decoder`` compares the decoder graph with the Keras inverse DWT alone
    (both float32, so it is exact like the encoder), and ``"postfilter_int8"`` gives the int8
    filter's largest deviation from the Keras float filter on those planes, in quantizer steps
    (random planes are harsh: their differences saturate the int8 input), and whether the
    TFLite graph equals :func:`integer_reference` (it must: that is the determinism guarantee).
    """
    from edge_runtime.bundle import load_bundle
    from edge_runtime.codec import QUALITY_LEVELS, padded_shape, quantizer_step
    from edge_runtime.tflite_runner import Int8PostFilter, postfilter_input, postfilter_spec
    from keras_codec.models.default import bundle_transforms
    from keras_codec.models.wavelet import join_details

    bundle = load_bundle(bundle_dir)
    section = bundle.manifest.get("tflite")
    if not section:
        raise RuntimeError(f"{bundle_dir}: the bundle has no TFLite export; run export_transforms first")
    step = quantizer_step(QUALITY_LEVELS[-1]) if step is None else float(step)
    enc = _interpreter(bundle.path / section["encoder"], num_threads)
    dec = _interpreter(bundle.path / section["decoder"], num_threads)
    spec = postfilter_spec(bundle)
    int8 = None
    if spec is not None:
        pf_path = bundle.path / spec.get("file", POSTFILTER_FILE)
        int8 = {"run": Int8PostFilter(pf_path, spec, kernels="reference", num_threads=num_threads),
                "model": pf_path.read_bytes(), "max_abs_diff_steps": 0.0, "equals_integer_reference": True}
    rng = np.random.default_rng(seed)
    report, worst = {}, 0.0
    keras, plain = {}, {}
    for key in section["signature_order"]:
        sig = section["signatures"][key]
        name, levels = sig["transform"], int(sig["levels"])
        if name not in keras:
            keras[name] = bundle_transforms(bundle, name, _postfilter_for(bundle, name))
            plain[name] = (bundle_transforms(bundle, name) if int8 is not None and spec["transform"] == name
                           else keras[name])
        wt = keras[name]
        e_diff = d_diff = 0.0
        for rows, cols in shapes:
            rows, cols = padded_shape(rows, cols, levels)
            plane = rng.random((rows, cols), dtype=np.float32)
            bands = wt.analysis(plane, levels)
            expected = join_details(bands)
            got = run_signature(enc, key, [plane[None, :, :, None]])
            e_diff = max(e_diff, max(float(np.abs(g - e).max()) for g, e in zip(got, expected)))
            (y_tfl,) = run_signature(dec, key, expected + [np.array([step], np.float32)])
            y_tfl = y_tfl[0, :, :, 0]
            d_diff = max(d_diff, float(np.abs(y_tfl - plain[name].synthesis(bands, levels, step=step)).max()))
            if plain[name] is not wt:
                y_keras = wt.synthesis(bands, levels, step=step)
                int8["max_abs_diff_steps"] = max(int8["max_abs_diff_steps"],
                                                 float(np.abs(int8["run"](y_tfl, step) - y_keras).max()) / step)
                q = postfilter_input(y_tfl, step, spec)
                (r,) = run_signature(int8["model"], spec.get("signature", POSTFILTER_SIGNATURE), [q])
                int8["equals_integer_reference"] &= bool(np.array_equal(r, integer_reference(int8["model"], q)))
        report[key] = {"encoder": e_diff, "decoder": d_diff}
        worst = max(worst, e_diff, d_diff)
    report["max_abs_diff"] = worst
    if int8 is not None:
        report["postfilter_int8"] = {k: int8[k] for k in ("max_abs_diff_steps", "equals_integer_reference")}
    return report


def test_split_report(bundle_dir, qualities=(12, 17), folder=None, progress=print) -> list[dict]:
    """Keras against the exported TFLite graphs on real images: bpp and PSNR of the same streams.

    Each test image (or each image under `folder`) is encoded by the workstation coder and by
    the edge coder at each quality, and each stream decoded by both; the rows give the bpp of
    both streams and the PSNR of the TFLite decode minus the Keras decode.
    """
    from edge_runtime.bundle import load_bundle
    from edge_runtime.codec import decode_image, encode_image
    from edge_runtime.runtime import load_codec
    from keras_codec.evaluation import metrics
    from keras_codec.evaluation.evaluate import evaluation_images
    from keras_codec.models.default import DefaultCodec

    bundle = load_bundle(bundle_dir)
    keras_coder = DefaultCodec.from_bundle(bundle).coder
    _b, edge_coder = load_codec(bundle)
    quant = bundle.manifest.get("tflite", {}).get("quantization", "float32")
    rows = []
    for name, img in evaluation_images(folder):
        for q in qualities:
            ref = encode_image(img, coder=keras_coder, model_id=bundle.model_id, quality=q)
            out = encode_image(img, coder=edge_coder, model_id=bundle.model_id, quality=q)
            p_ref = metrics.psnr(img.pixels, decode_image(ref, coder=keras_coder)[0].pixels)
            p_out = metrics.psnr(img.pixels, decode_image(out, coder=edge_coder)[0].pixels)
            n = img.pixels.size
            row = {"image": name, "quality": q, "quant": quant, "bpp_keras": 8 * len(ref) / n,
                   "bpp_tflite": 8 * len(out) / n, "psnr_keras": p_ref, "psnr_tflite": p_out,
                   "same_stream": ref == out}
            rows.append(row)
            progress(f"{name:36s} q{q:<3d} {quant}: bpp {row['bpp_keras']:.4f} -> {row['bpp_tflite']:.4f}  "
                     f"PSNR {p_ref:.3f} -> {p_out:.3f} dB ({p_out - p_ref:+.3f})"
                     f"{'  identical stream' if ref == out else ''}")
    return rows


def bd_rate_report(anchor_dir, test_dir, qualities=None, folder=None, progress=print) -> dict:
    """BD-rate of bundle `test_dir` against bundle `anchor_dir`, both through their TFLite graphs, over
    40-55 dB (`keras_codec.evaluation.metrics.bd_rate`), per test image (or image under `folder`) and the mean.

    The two bundles must be quantizations of one model: the same context model and tables, and
    encoders (float32 in every mode) that code the same streams but for the model id, which is
    checked on each image's first quality (two conversions of one graph need not be the same
    bytes). Each stream, coded once by the anchor, is decoded by both.
    """
    from edge_runtime import bitstream as bs
    from edge_runtime.codec import QUALITY_LEVELS, decode_image, encode_image
    from edge_runtime.runtime import load_codec
    from keras_codec.evaluation import metrics
    from keras_codec.evaluation.evaluate import evaluation_images

    anchor, anchor_coder = load_codec(anchor_dir)
    test, test_coder = load_codec(test_dir)
    for name in ("context.npz", "tables.npz"):
        if (Path(anchor_dir) / name).read_bytes() != (Path(test_dir) / name).read_bytes():
            raise ValueError(f"{anchor_dir} and {test_dir} differ in {name}: not two quantizations of one model")
    qualities = list(qualities or QUALITY_LEVELS)
    images = {}
    for name, img in evaluation_images(folder):
        curve_a, curve_t = [], []
        for q in qualities:
            data = encode_image(img, coder=anchor_coder, model_id=anchor.model_id, quality=q)
            if q == qualities[0]:
                own = encode_image(img, coder=test_coder, model_id=test.model_id, quality=q)
                if bs.parse(own)[1] != bs.parse(data)[1]:
                    raise RuntimeError(f"{name}: the two bundles code different streams at quality {q}")
            bpp = 8 * len(data) / img.pixels.size
            curve_a.append((bpp, metrics.psnr(img.pixels, decode_image(data, coder=anchor_coder)[0].pixels)))
            curve_t.append((bpp, metrics.psnr(img.pixels, decode_image(data, coder=test_coder)[0].pixels)))
        a, t = np.array(curve_a), np.array(curve_t)
        bd = metrics.bd_rate(a[:, 0], a[:, 1], t[:, 0], t[:, 1], 40.0, 55.0)
        inside = (a[:, 1] >= 40.0) & (a[:, 1] <= 55.0)
        dpsnr = float(np.mean(t[inside, 1] - a[inside, 1])) if inside.any() else float("nan")
        images[name] = {"bd_rate": bd, "mean_dpsnr_40_55": dpsnr, "anchor": curve_a, "test": curve_t}
        progress(f"{name:36s} BD-rate {bd:+.2f} %  (mean PSNR change {dpsnr:+.3f} dB over {int(inside.sum())} "
                 f"qualities in 40-55 dB)")
    finite = [v["bd_rate"] for v in images.values() if np.isfinite(v["bd_rate"])]
    mean = float(np.mean(finite)) if finite else float("nan")
    progress(f"mean BD-rate over {len(finite)} images: {mean:+.2f} %")
    return {"images": images, "mean_bd_rate": mean, "qualities": qualities}


def bundle_sizes(bundle_dir) -> dict:
    """{file name: bytes} of every file in a bundle directory, and "total"."""
    sizes = {p.name: p.stat().st_size for p in sorted(Path(bundle_dir).iterdir()) if p.is_file()}
    return {**sizes, "total": sum(sizes.values())}


def transform_quantization_ceiling(bundle_dir, folder=None, modes=("int8", "int16x8"), crop: int = 256,
                                   progress=print) -> list[dict]:
    """PSNR ceiling that quantizing the lifting synthesis would impose: why it stays float32.

    The bundle's inverse DWT (no post-filter) of each needed depth is converted with full-integer
    quantization (``int8``; ``int16x8``: int16 activations, int8 weights, ops without a 16x8
    kernel left float), calibrated on the central `crop`² of train-split planes, and run on the
    exact, unquantized coefficients of every test plane (or image under `folder`). PSNR over the
    plane's dynamic range, per image.
    """
    import tensorflow as tf

    from edge_runtime.bundle import load_bundle
    from edge_runtime.codec import levels_for, pad_plane
    from keras_codec.evaluation.evaluate import evaluation_images
    from keras_codec.models.wavelet import WaveletTransforms, join_details

    bundle = load_bundle(bundle_dir)
    name = (bundle.manifest.get("postfilter") or {}).get("wavelet") or _transform_names(bundle.manifest)[0]
    cfg = _wavelet_config(bundle.manifest, name)
    wt = WaveletTransforms(cfg)
    train = [x[(x.shape[0] - crop) // 2:(x.shape[0] - crop) // 2 + crop,
               (x.shape[1] - crop) // 2:(x.shape[1] - crop) // 2 + crop]
             for x in _train_planes() if min(x.shape) >= crop]
    ops = {"int8": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8],
           "int16x8": [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                       tf.lite.OpsSet.TFLITE_BUILTINS]}
    graphs = {}

    def graph(mode, levels):
        if (mode, levels) not in graphs:
            fn, _ = _decoder_fn(cfg, levels, None)
            names = [_band_name(i) for i in range(levels + 1)]
            samples = [dict(zip(names, join_details(wt.analysis(x.astype(np.float32), levels))),
                            step=np.array([0.01], np.float32)) for x in train]
            module = tf.Module()
            module.fn = fn
            with tempfile.TemporaryDirectory() as tmp:
                tf.saved_model.save(module, tmp, signatures={"synthesis": fn.get_concrete_function()})
                converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["synthesis"])
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.representative_dataset = lambda: iter(samples)
                converter.target_spec.supported_ops = ops[mode]
                graphs[(mode, levels)] = converter.convert()
        return graphs[(mode, levels)]

    rows = []
    for img_name, img in evaluation_images(folder):
        sse = {m: 0.0 for m in modes}
        n = 0
        for f in range(img.frames):
            for smp in range(img.samples):
                px = img.pixels[f, :, :, smp].astype(np.float64)
                x = (px - px.min()) / max(px.max() - px.min(), 1.0)
                levels = levels_for(*x.shape, _max_levels(bundle.manifest))
                bands = join_details(wt.analysis(pad_plane(x, levels), levels))
                for m in modes:
                    (y,) = run_signature(graph(m, levels), "synthesis", bands + [np.array([0.01], np.float32)])
                    sse[m] += float(((y[0, :x.shape[0], :x.shape[1], 0] - x) ** 2).sum())
                n += x.size
        row = {"image": img_name, **{m: 10 * math.log10(n / max(sse[m], 1e-30)) for m in modes}}
        rows.append(row)
        progress(f"{img_name:36s} inverse DWT on exact coefficients: " +
                 ", ".join(f"{m} {row[m]:.1f} dB" for m in modes))
    return rows


def quantization_report(bundle_dir, exported_quant: str | None = None, qualities=(12, 17), folder=None,
                        progress=print) -> dict:
    """The export's --report: for float32, float16 and int8, the bpp and PSNR change of TFLite against
    Keras (:func:`test_split_report`); the BD-rate of int8 against float32 (:func:`bd_rate_report`);
    the bundle sizes; and the PSNR ceiling a quantized lifting transform would impose.

    `bundle_dir` holds one export (mode `exported_quant`, default its manifest's); the other
    modes are exported from it into a temporary folder.
    """
    bundle_dir = Path(bundle_dir)
    exported_quant = exported_quant or json.loads((bundle_dir / "manifest.json").read_text()).get(
        "tflite", {}).get("quantization")
    out = {"test_split": {}, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for mode in QUANT_MODES:
            if mode == exported_quant:
                dirs[mode] = bundle_dir
            else:
                progress(f"exporting {mode} for the comparison")
                dirs[mode] = Path(tmp) / mode
                export_transforms(bundle_dir, dirs[mode], quant=mode, progress=progress)
        for mode, d in dirs.items():
            progress(f"--- {mode}: TFLite against Keras on the test split")
            rows = test_split_report(d, qualities=qualities, folder=folder, progress=progress)
            db = np.array([r["psnr_tflite"] - r["psnr_keras"] for r in rows])
            dbpp = np.array([r["bpp_tflite"] - r["bpp_keras"] for r in rows])
            progress(f"{mode}: bpp change mean {dbpp.mean():+.5f} (max |{np.abs(dbpp).max():.5f}|), PSNR change "
                     f"mean {db.mean():+.3f} dB (min {db.min():+.3f}, max {db.max():+.3f}) over {len(rows)} codings")
            out["test_split"][mode] = rows
        progress("--- BD-rate of the int8 bundle against the float32 bundle (TFLite both), 40-55 dB")
        out["bd_rate_int8_vs_float32"] = bd_rate_report(dirs["float32"], dirs["int8"], folder=folder,
                                                        progress=progress)
        progress("--- bundle sizes (bytes)")
        for mode, d in dirs.items():
            sizes = bundle_sizes(d)
            out["sizes"][mode] = sizes
            progress(f"{mode}: " + ", ".join(f"{k} {v}" for k, v in sizes.items() if k != "total")
                     + f"; total {sizes['total']}")
    progress("--- the lifting synthesis quantized (why it stays float32)")
    out["transform_ceiling"] = transform_quantization_ceiling(bundle_dir, folder=folder, progress=progress)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.tflite_export", description=__doc__.split("\n")[0])
    parser.add_argument("bundle", help="model bundle directory")
    parser.add_argument("--out", default=None, help="write a copy of the bundle here (default: in place)")
    parser.add_argument("--quant", choices=QUANT_MODES, default="float32")
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument("--report", action="store_true",
                        help="also print, on the test split, the bpp/PSNR change of TFLite against Keras for "
                             "float32, float16 and int8, the BD-rate of int8 against float32, the bundle sizes "
                             "and the PSNR ceiling of a quantized lifting transform (minutes)")
    args = parser.parse_args(argv)
    try:
        section = export_transforms(args.bundle, args.out, quant=args.quant, progress=print)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or args.bundle)
    files = [section["encoder"], section["decoder"]]
    files += [section["postfilter_int8"]["file"]] if "postfilter_int8" in section else []
    for f in files:
        print(f"{out / f}: {(out / f).stat().st_size} bytes")
    print(f"signatures: {', '.join(section['signature_order'])}")
    if not args.no_verify:
        report = verify_export(out)
        if "postfilter_int8" in report:
            pf = report["postfilter_int8"]
            print(f"max |TFLite - Keras| = {report['max_abs_diff']:.3g} (encoder, inverse DWT); int8 post-filter: "
                  f"max |TFLite - Keras| = {pf['max_abs_diff_steps']:.3g} steps on random planes, equal to exact "
                  f"integer arithmetic: {'yes' if pf['equals_integer_reference'] else 'NO'}")
        else:
            print(f"max |TFLite - Keras| = {report['max_abs_diff']:.3g}")
    if args.report:
        quantization_report(out, args.quant)
    return 0


if __name__ == "__main__":
    sys.exit(main())
