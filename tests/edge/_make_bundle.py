"""Make the tiny TFLite test bundle in tests/edge/data/bundle (workstation venv only: needs TensorFlow).

Regenerate only on purpose (it changes the bundle's model id, so every stream made with the old
one stops decoding):

    .venv/bin/python tests/edge/_make_bundle.py

The bundle is the shipped default's manifest, context model and tables plus two TFLite files
with one signature per (transform, levels), in the layout export/graphs.py describes:

- ``cdf97_L2`` and ``cdf97_L4`` from keras_codec.layers.DWT2D / IDWT2D with STATIC shapes
  (40x56 and 128x128: the padded sizes of the tests' synthetic image and of CT_small.dcm),
  because IDWT2D needs static H and W;
- ``haar_L2`` and ``haar_L4`` with DYNAMIC H x W (space_to_depth + a 4x4 orthonormal 1x1 map,
  checked here against DWT2D("haar")), so the tests exercise the runner's resizing too.

Tensor names follow both conventions the runner must accept: the cdf97 signatures use
export.tflite_utils' input_000.../output_000... (the decoder's last input is the step), the
haar ones export/graphs.py's plane / band_00... / step. The step has shape (1,). There is no
post-filter, but the step is still wired into the graph (multiplied by zero) so the converter keeps it.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = HERE / "data" / "bundle"
STATIC = {2: (40, 56), 4: (128, 128)}  # cdf97 levels -> padded (rows, cols)
HAAR_LEVELS = (2, 4)


def _names(n, prefix):
    return [f"{prefix}_{i:03d}" for i in range(n)]


def _band_specs(tf, rows, cols, levels):
    specs = [((1, None if rows is None else rows >> levels, None if cols is None else cols >> levels, 1))]
    for lv in range(levels, 0, -1):
        specs.append((1, None if rows is None else rows >> lv, None if cols is None else cols >> lv, 3))
    names = _names(levels + 2, "input")
    return ([tf.TensorSpec(s, tf.float32, name=n) for s, n in zip(specs, names)]
            + [tf.TensorSpec((1,), tf.float32, name=names[-1])])


def _cdf97_pair(tf, levels, rows, cols, mode):
    from keras_codec.layers import DWT2D, IDWT2D

    dwt, idwt = DWT2D("cdf97", levels, mode), IDWT2D("cdf97", levels, mode)

    @tf.function(input_signature=[tf.TensorSpec((1, rows, cols, 1), tf.float32, name="input_000")])
    def enc(x):
        return {n: t for n, t in zip(_names(levels + 1, "output"), dwt(x))}

    @tf.function(input_signature=_band_specs(tf, rows, cols, levels))
    def dec(*args):
        y = idwt(list(args[:-1]))
        return {"output_000": y + 0.0 * tf.reshape(args[-1], (1, 1, 1, 1))}

    return enc, dec


# Orthonormal Haar on a 2x2 block [a b; c d] (space_to_depth order a, b, c, d), in DWT2D's
# normalization: LL = (a+b+c+d)/2, H (high along rows) = (a+b-c-d)/2, V = (a-b+c-d)/2, D = (a-b-c+d)/2.
_HAAR = 0.5 * np.array([[1, 1, 1, 1], [1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]], np.float32)


def _haar_pair(tf):
    fwd = tf.constant(_HAAR.T)  # blocks (.., 4) @ fwd -> (LL, H, V, D)
    inv = tf.constant(_HAAR)  # orthonormal: the inverse is the transpose

    def enc_fn(levels):
        @tf.function(input_signature=[tf.TensorSpec((1, None, None, 1), tf.float32, name="plane")])
        def enc(x):
            details = []
            for _ in range(levels):
                c = tf.tensordot(tf.nn.space_to_depth(x, 2), fwd, axes=1)
                x, det = c[..., :1], c[..., 1:]
                details.append(det)
            return {f"band_{i:02d}": t for i, t in enumerate([x] + details[::-1])}
        return enc

    def dec_fn(levels):
        specs = [tf.TensorSpec((1, None, None, 1 if i == 0 else 3), tf.float32, name=f"band_{i:02d}")
                 for i in range(levels + 1)] + [tf.TensorSpec((1,), tf.float32, name="step")]

        @tf.function(input_signature=specs)
        def dec(*args):
            x = args[0]
            for det in args[1:-1]:
                x = tf.nn.depth_to_space(tf.tensordot(tf.concat([x, det], -1), inv, axes=1), 2)
            return {"plane": x + 0.0 * tf.reshape(args[-1], (1, 1, 1, 1))}
        return dec

    return enc_fn, dec_fn


def _convert(tf, functions: dict) -> bytes:
    """Several tf.functions -> one TFLite flatbuffer with a signature per key (builtin ops only)."""
    module = tf.Module()
    sigs = {}
    for key, fn in functions.items():
        setattr(module, key, fn)
        sigs[key] = fn.get_concrete_function()
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures=sigs)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(sigs))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return converter.convert()


def _check_haar(tf, enc_fn, mode):
    """The dynamic Haar graph equals DWT2D('haar') to float precision."""
    from keras_codec.layers import DWT2D

    x = np.random.default_rng(0).random((1, 32, 48, 1)).astype(np.float32)
    ours = enc_fn(2)(tf.constant(x))
    ref = DWT2D("haar", 2, mode)(x)
    for i, r in enumerate(ref):
        err = float(np.abs(ours[f"band_{i:02d}"].numpy() - r.numpy()).max())
        assert err < 1e-5, f"haar band {i} differs from DWT2D by {err}"


def make(out: Path = OUT) -> bytes:
    import tensorflow as tf

    sys.path.insert(0, str(ROOT))
    from edge_runtime.bundle import default_bundle_path, model_id_of

    src = default_bundle_path()
    manifest = json.loads((src / "manifest.json").read_text())
    mode = manifest["codec"].get("mode", "symmetric")
    enc_h, dec_h = _haar_pair(tf)
    _check_haar(tf, enc_h, mode)
    encoders, decoders = {}, {}
    for levels, (rows, cols) in STATIC.items():
        encoders[f"cdf97_L{levels}"], decoders[f"cdf97_L{levels}"] = _cdf97_pair(tf, levels, rows, cols, mode)
    for levels in HAAR_LEVELS:
        encoders[f"haar_L{levels}"], decoders[f"haar_L{levels}"] = enc_h(levels), dec_h(levels)

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("context.npz", "tables.npz"):
        shutil.copy(src / name, out / name)
    (out / "encoder.tflite").write_bytes(_convert(tf, encoders))
    (out / "decoder.tflite").write_bytes(_convert(tf, decoders))
    manifest["codec"]["transforms"] = ["cdf97", "haar"]
    for learned in ("refine", "postfilter", "residual"):  # plain transforms here: none of their files is copied
        manifest.pop(learned, None)
    manifest["tflite"] = {
        "encoder": "encoder.tflite", "decoder": "decoder.tflite", "dtype": "float32",
        "signatures": sorted(encoders),
        "static_shapes": {f"cdf97_L{lv}": list(rc) for lv, rc in STATIC.items()},
        "made_by": "tests/edge/_make_bundle.py (test bundle, not a trained model)",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    model_id = model_id_of(out)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({size} bytes), model id {model_id.hex()}")
    return model_id


if __name__ == "__main__":
    make()
