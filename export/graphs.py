"""The encoder and decoder graphs of a bundle, as ``tf.function``s whose signatures the edge relies on.

``encoder.tflite`` and ``decoder.tflite`` each hold one signature per (transform, levels) pair the
codec can use: every transform in the manifest's ``codec["transforms"]`` (or its one
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
"""
from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from keras_codec.config import CodecConfig, WaveletConfig
from keras_codec.layers import DWT2D, IDWT2D

__all__ = ["signature_key", "band_name", "manifest_transforms", "manifest_levels", "wavelet_config",
           "encoder_fn", "decoder_fn", "tensor_doc"]


def signature_key(transform: str, levels: int) -> str:
    """The signature of transform `transform` at `levels` levels, e.g. ``cdf97_L5``."""
    return f"{transform}_L{int(levels)}"


def band_name(i: int) -> str:
    """Tensor name of band `i` (0: LL, then details coarse to fine)."""
    return f"band_{i:02d}"


def manifest_transforms(manifest: dict) -> list:
    """The transforms a bundle codes with, in manifest order."""
    codec = manifest.get("codec", {})
    names = codec.get("transforms") or [codec.get("wavelet") or manifest["config"]["wavelet"]["wavelet"]]
    return list(names)


def manifest_levels(manifest: dict) -> int:
    """The largest level count a bundle codes with."""
    codec = manifest.get("codec", {})
    return int(codec.get("levels", manifest["config"]["wavelet"]["levels"]))


def wavelet_config(manifest: dict, name: str) -> WaveletConfig:
    """The WaveletConfig of transform `name`, as `keras_codec.models.default.DefaultCodec.from_bundle` builds it."""
    return dataclasses.replace(CodecConfig.from_dict(manifest["config"]).wavelet, wavelet=name)


def encoder_fn(cfg, levels: int, refine=None):
    """(encoder signature function, its analysis callable): the DWT of `cfg`, or `refine`'s analysis."""
    layer = DWT2D(cfg.wavelet, levels, cfg.mode)
    if refine is not None:
        layer = lambda x: refine.analysis(x, levels)  # noqa: E731

    @tf.function(input_signature=[tf.TensorSpec((1, None, None, 1), tf.float32, name="plane")])
    def encode(plane):
        return {band_name(i): t for i, t in enumerate(layer(plane))}

    return encode, layer


def decoder_fn(cfg, levels: int, postfilter, refine=None):
    """(decoder signature function, its synthesis callable): the inverse DWT of `cfg` (or `refine`'s
    synthesis), followed by `postfilter` at the input step when one is given."""
    layer = IDWT2D(cfg.wavelet, levels, cfg.mode)
    if refine is not None:
        layer = lambda bands: refine.synthesis(bands, levels)  # noqa: E731
    specs = [tf.TensorSpec((1, None, None, 1), tf.float32, name=band_name(0))]
    specs += [tf.TensorSpec((1, None, None, 3), tf.float32, name=band_name(i)) for i in range(1, levels + 1)]
    specs.append(tf.TensorSpec((1,), tf.float32, name="step"))

    @tf.function(input_signature=specs)
    def decode(*args):
        y = layer(list(args[:-1]))
        if postfilter is not None:
            log_step = tf.reshape(tf.math.log(args[-1]) * (1.0 / math.log(10.0)), (1, 1))
            y = postfilter([y, log_step], training=False)
        return {"plane": y}

    return decode, layer


def tensor_doc(levels: int) -> dict:
    """The tensor names of a signature with `levels` levels, as the manifest lists them."""
    bands = [band_name(i) for i in range(levels + 1)]
    return {"encoder_inputs": ["plane"], "encoder_outputs": bands,
            "decoder_inputs": bands + ["step"], "decoder_outputs": ["plane"]}
