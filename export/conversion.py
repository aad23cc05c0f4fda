"""Export a bundle's wavelet transforms to TFLite: ``encoder.tflite`` and ``decoder.tflite``
(and, quantized to int8, the post-filter as ``postfilter.tflite``).

The graphs, their signature keys and tensor names are those of :mod:`export.graphs`. The manifest
gets a ``tflite`` section describing them (files, keys, tensor order, quantization, post-filter per
transform). Adding .tflite files changes the bundle's model id (``edge_runtime.bundle.model_id_of``
hashes them).

Quantization (the encoder and every lifting transform always stay float32):

- ``float32``;
- ``float16`` stores the post-filter's conv and dense kernels in float16 (see
  :func:`_weights_to_float16`: the lifting transform's scalar constants stay float32);
- ``int8``: the decoder graph is the inverse DWT alone and the post-filter becomes a separate
  full-integer graph, ``postfilter.tflite`` (:mod:`export.int8`).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from edge_runtime.bundle import load_bundle
from edge_runtime.tflite_runner import DECODER_FILE, ENCODER_FILE, POSTFILTER_FILE
from export.graphs import (decoder_fn, encoder_fn, manifest_levels, manifest_transforms, signature_key, tensor_doc,
                           wavelet_config)
from export.int8 import (REPRESENTATIVE_CROP, REPRESENTATIVE_PLANES_PER_IMAGE, REPRESENTATIVE_QUALITIES,
                         int8_postfilter, representative_planes)
from keras_codec.models.refine import load_refinement
from keras_codec.models.wavelet import load_postfilter

__all__ = ["export_transforms", "QUANT_MODES"]

QUANT_MODES = ("float32", "float16", "int8")
TFLITE_SECTION_FORMAT = 1
_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")  # kernels stored float16


def _convert(functions: dict, trackables: list, quant: str) -> bytes:
    """{key: tf.function} -> one TFLite flatbuffer with a signature per key, builtin ops only.

    Goes through a SavedModel so the signature keys are exactly ours.
    """
    module = tf.Module()
    module.keep = list(trackables)  # the post-filters and refinements, whose variables the functions capture
    concrete = {k: f.get_concrete_function() for k, f in functions.items()}
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures=concrete)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(concrete))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        model = converter.convert()
    return _weights_to_float16(model) if quant == "float16" else model


def _weights_to_float16(model: bytes) -> bytes:
    """Store the kernels of conv / fully connected ops in float16, each followed by a DEQUANTIZE.

    The converter's own float16 mode (``supported_types=[tf.float16]``) would also round the
    lifting transform's scalar constants (sqrt(2), the CDF 9/7 lifting coefficients) to
    float16: measured 5e-4 max error on a bare Haar synthesis in [0, 1] units, about 30 grey
    levels of a 16-bit image. So only the kernels (operand 1 of those ops) are converted
    here; everything else, biases included, stays float32.
    """
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


def export_transforms(bundle_dir, out_dir=None, quant: str = "float32", representative=None,
                      progress=None) -> dict:
    """Write ``encoder.tflite`` and ``decoder.tflite`` (and for int8 ``postfilter.tflite``; see
    the module docstring) and the manifest's ``tflite`` section; return that section.

    With ``out_dir`` the bundle is copied there first and the source is left untouched.
    `representative` (int8 only): the post-filter's representative set as [(plane, step), ...]
    instead of :func:`export.int8.representative_planes` on the train split. `progress` gets one line per
    slow step (int8).
    """
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
    names = manifest_transforms(manifest)
    max_levels = manifest_levels(manifest)

    encoders, decoders, trackables, signatures, postfilters, models, refines = {}, {}, [], {}, {}, {}, []
    for name in names:
        cfg = wavelet_config(manifest, name)
        pf = load_postfilter(bundle, wavelet=name)
        postfilters[name] = pf is not None
        if pf is not None:
            models[name] = pf
        if pf is not None and quant != "int8":
            trackables.append(pf)
        rf = load_refinement(bundle, wavelet=name)
        if rf is not None:
            refines.append(rf)
        for levels in range(1, max_levels + 1):
            key = signature_key(name, levels)
            encoders[key], _ = encoder_fn(cfg, levels, rf)
            # int8: the decoder graph is the float inverse DWT alone; the filter is postfilter.tflite.
            decoders[key], _ = decoder_fn(cfg, levels, None if quant == "int8" else pf, rf)
            signatures[key] = {"transform": name, "levels": levels, "mode": cfg.mode, **tensor_doc(levels)}

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
        int8_model, int8_entry = int8_postfilter(pf, planes, progress=progress)
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
