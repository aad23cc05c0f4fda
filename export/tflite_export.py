"""Export a bundle's wavelet transforms to TFLite: ``encoder.tflite`` and ``decoder.tflite``.

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
  units; output ``plane`` (1, H, W, 1). The decoder includes the bundle's
  post-filter when the manifest has one for that transform (it uses ``step``);
  otherwise ``step`` is unused but still an input, so the signature is stable.

The manifest gets a ``tflite`` section describing this (files, keys, tensor
order, quantization, post-filter per transform). Adding .tflite files changes
the bundle's model id (``edge_runtime.bundle.model_id_of`` hashes them).

Quantization: ``float32``; ``float16`` stores the post-filter's conv and
dense kernels in float16 (see :func:`_weights_to_float16`: the lifting
transform's scalar constants stay float32, and the encoder is always float32);
``int8`` is refused (see :func:`_refuse_int8`).
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

__all__ = ["export_transforms", "verify_export", "run_signature", "signature_key", "QUANT_MODES"]

QUANT_MODES = ("float32", "float16", "int8")
ENCODER_FILE = "encoder.tflite"
DECODER_FILE = "decoder.tflite"
TFLITE_SECTION_FORMAT = 1


def signature_key(transform: str, levels: int) -> str:
    return f"{transform}_L{int(levels)}"


def _band_name(i: int) -> str:
    return f"band_{i:02d}"


def _refuse_int8():
    raise ValueError(
        "int8 export is refused: the TFLite converter would also quantize the lifting "
        "transform's adds and multiplies, and the wavelet analysis/synthesis must stay float "
        "so that TFLite matches Keras (and the encoder's and decoder's transforms stay exact "
        "inverses); a post-filter small enough for this codec gains little from int8. "
        "Use --quant float32 or float16."
    )


def _transform_names(manifest: dict) -> list:
    codec = manifest.get("codec", {})
    names = codec.get("transforms") or [codec.get("wavelet") or manifest["config"]["wavelet"]["wavelet"]]
    return list(names)


def _max_levels(manifest: dict) -> int:
    codec = manifest.get("codec", {})
    return int(codec.get("levels", manifest["config"]["wavelet"]["levels"]))


def _wavelet_config(manifest: dict, name: str):
    """The WaveletConfig of transform `name`, as `keras_codec.evaluate.workstation_coder` builds it."""
    from keras_codec.config import CodecConfig

    return dataclasses.replace(CodecConfig.from_dict(manifest["config"]).wavelet, wavelet=name)


def _postfilter_for(bundle, name: str):
    from keras_codec.models.wavelet import load_postfilter

    return load_postfilter(bundle, wavelet=name)


def _encoder_fn(cfg, levels: int):
    import tensorflow as tf

    from keras_codec.layers import DWT2D

    layer = DWT2D(cfg.wavelet, levels, cfg.mode)

    @tf.function(input_signature=[tf.TensorSpec((1, None, None, 1), tf.float32, name="plane")])
    def encode(plane):
        return {_band_name(i): t for i, t in enumerate(layer(plane))}

    return encode, layer


def _decoder_fn(cfg, levels: int, postfilter):
    import tensorflow as tf

    from keras_codec.layers import IDWT2D

    layer = IDWT2D(cfg.wavelet, levels, cfg.mode)
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
    module.keep = list(trackables)  # the post-filters, whose variables the functions capture
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


def export_transforms(bundle_dir, out_dir=None, quant: str = "float32") -> dict:
    """Write ``encoder.tflite`` and ``decoder.tflite`` (see the module docstring) and the
    manifest's ``tflite`` section; return that section.

    With ``out_dir`` the bundle is copied there first and the source is left untouched.
    """
    from edge_runtime.bundle import load_bundle

    if quant not in QUANT_MODES:
        raise ValueError(f"unknown quantization {quant!r}; choose one of {QUANT_MODES}")
    if quant == "int8":
        _refuse_int8()
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

    encoders, decoders, trackables, signatures, postfilters = {}, {}, [], {}, {}
    for name in names:
        cfg = _wavelet_config(manifest, name)
        pf = _postfilter_for(bundle, name)
        postfilters[name] = pf is not None
        if pf is not None:
            trackables.append(pf)
        for levels in range(1, max_levels + 1):
            key = signature_key(name, levels)
            encoders[key], _ = _encoder_fn(cfg, levels)
            decoders[key], _ = _decoder_fn(cfg, levels, pf)
            signatures[key] = {"transform": name, "levels": levels, "mode": cfg.mode, **_tensor_doc(levels)}

    (out_dir / ENCODER_FILE).write_bytes(_convert(encoders, [], "float32"))
    (out_dir / DECODER_FILE).write_bytes(
        _convert(decoders, trackables, quant if any(postfilters.values()) else "float32"))

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
    manifest = {**manifest, "tflite": section}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return section


# --- Running ---------------------------------------------------------------


def _interpreter(model, num_threads: int = 1):
    from keras_codec.tflite_utils import _interpreter_class

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
    """
    from edge_runtime.bundle import load_bundle
    from edge_runtime.codec import QUALITY_LEVELS, padded_shape, quantizer_step
    from keras_codec.models.wavelet import WaveletTransforms, join_details

    bundle = load_bundle(bundle_dir)
    section = bundle.manifest.get("tflite")
    if not section:
        raise RuntimeError(f"{bundle_dir}: the bundle has no TFLite export; run export_transforms first")
    step = quantizer_step(QUALITY_LEVELS[-1]) if step is None else float(step)
    enc = _interpreter(bundle.path / section["encoder"], num_threads)
    dec = _interpreter(bundle.path / section["decoder"], num_threads)
    rng = np.random.default_rng(seed)
    report, worst = {}, 0.0
    keras = {}
    for key in section["signature_order"]:
        sig = section["signatures"][key]
        name, levels = sig["transform"], int(sig["levels"])
        if name not in keras:
            keras[name] = WaveletTransforms(_wavelet_config(bundle.manifest, name), _postfilter_for(bundle, name))
        wt = keras[name]
        e_diff = d_diff = 0.0
        for rows, cols in shapes:
            rows, cols = padded_shape(rows, cols, levels)
            plane = rng.random((rows, cols), dtype=np.float32)
            bands = wt.analysis(plane, levels)
            expected = join_details(bands)
            got = run_signature(enc, key, [plane[None, :, :, None]])
            e_diff = max(e_diff, max(float(np.abs(g - e).max()) for g, e in zip(got, expected)))
            y_keras = wt.synthesis(bands, levels, step=step)
            (y_tfl,) = run_signature(dec, key, expected + [np.array([step], np.float32)])
            d_diff = max(d_diff, float(np.abs(y_tfl[0, :, :, 0] - y_keras).max()))
        report[key] = {"encoder": e_diff, "decoder": d_diff}
        worst = max(worst, e_diff, d_diff)
    report["max_abs_diff"] = worst
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
    from keras_codec import metrics
    from keras_codec.evaluate import evaluation_images, workstation_coder

    bundle = load_bundle(bundle_dir)
    keras_coder = workstation_coder(bundle)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.tflite_export", description=__doc__.split("\n")[0])
    parser.add_argument("bundle", help="model bundle directory")
    parser.add_argument("--out", default=None, help="write a copy of the bundle here (default: in place)")
    parser.add_argument("--quant", choices=QUANT_MODES, default="float32")
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument("--report", action="store_true",
                        help="also code the test split with Keras and with TFLite and print the bpp/PSNR change")
    args = parser.parse_args(argv)
    try:
        section = export_transforms(args.bundle, args.out, quant=args.quant)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or args.bundle)
    for f in (section["encoder"], section["decoder"]):
        print(f"{out / f}: {(out / f).stat().st_size} bytes")
    print(f"signatures: {', '.join(section['signature_order'])}")
    if not args.no_verify:
        report = verify_export(out)
        print(f"max |TFLite - Keras| = {report['max_abs_diff']:.3g}")
    if args.report:
        test_split_report(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
