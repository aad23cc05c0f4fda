"""TFLite export of the wavelet transforms: dynamic H, W, one signature per (transform, levels),
builtin ops only, and TFLite = Keras to 1e-5."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from edge_runtime import context as ctx
from edge_runtime.bundle import load_bundle, model_id_of, save_bundle
from edge_runtime.entropy import laplace_tables
from export.tflite_export import export_transforms, op_names, run_signature, verify_export
from keras_codec.config import CodecConfig
from keras_codec.layers import DWT2D, IDWT2D
from keras_codec.models.wavelet import (WaveletTransforms, build_postfilter, join_details, postfilter_arch,
                                        save_postfilter)
from keras_codec.tflite_utils import _interpreter_class, run_tflite, to_tflite

TOL = 1e-5


def _dynamic_pair(wavelet, levels, mode="symmetric"):
    dwt, idwt = DWT2D(wavelet, levels, mode), IDWT2D(wavelet, levels, mode)
    analysis = tf.function(lambda x: dwt(x), input_signature=[tf.TensorSpec((1, None, None, 1), tf.float32)])
    specs = [tf.TensorSpec((1, None, None, 1), tf.float32)] + [tf.TensorSpec((1, None, None, 3), tf.float32)] * levels
    synthesis = tf.function(lambda *b: idwt(list(b)), input_signature=specs)
    return analysis, synthesis


@pytest.mark.parametrize("wavelet,mode", [("cdf97", "symmetric"), ("haar", "periodization")])
def test_dynamic_shape_dwt_tflite_matches_keras(wavelet, mode):
    levels = 3
    analysis, synthesis = _dynamic_pair(wavelet, levels, mode)
    enc, dec = to_tflite(analysis), to_tflite(synthesis)
    rng = np.random.default_rng(0)
    # 8x8 makes the coarsest band 1x1 (the boundary extension's n = 1 case).
    for rows, cols in [(64, 96), (8, 8), (256, 200)]:
        x = rng.random((1, rows, cols, 1), dtype=np.float32)
        expected = [t.numpy() for t in analysis(tf.constant(x))]
        got = run_tflite(enc, [x])
        assert [g.shape for g in got] == [e.shape for e in expected]
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=0, atol=TOL)
        (rec,) = run_tflite(dec, expected)
        np.testing.assert_allclose(rec, synthesis(*expected).numpy(), rtol=0, atol=TOL)
        np.testing.assert_allclose(rec, x, rtol=0, atol=TOL)


def test_dynamic_shape_keras_layers():
    inputs = tf.keras.Input((None, None, 2))
    coeffs = DWT2D("cdf97", 2, "symmetric")(inputs)
    assert [tuple(c.shape) for c in coeffs] == [(None, None, None, 2), (None, None, None, 6), (None, None, None, 6)]
    model = tf.keras.Model(inputs, IDWT2D("cdf97", 2, "symmetric")(coeffs))
    x = np.random.default_rng(1).random((2, 16, 24, 2), dtype=np.float32)
    np.testing.assert_allclose(model(x).numpy(), x, rtol=0, atol=TOL)
    with pytest.raises(ValueError, match=r"multiples of 4.*\(None, 6, None, 1\)"):
        DWT2D("cdf97", 2).compute_output_shape((None, 6, None, 1))
    with pytest.raises(ValueError, match="static number of channels"):
        DWT2D("cdf97", 2)(tf.keras.Input((None, None, None)))


def _tiny_bundle(path, postfilter=False):
    cfg = CodecConfig()
    w = cfg.wavelet
    tables = laplace_tables(w.num_scales, w.scale_min, w.scale_max, w.deadzone)
    weights = ctx.ContextWeights(np.zeros((3, 3, 3, ctx.NUM_FEATURES), np.int64), np.zeros((3, 2), np.int64))
    manifest = {"config": cfg.to_dict(),
                "codec": {"transforms": ["cdf97", "haar"], "levels": 3, "mode": w.mode, "wavelet": w.wavelet,
                          "deadzone": w.deadzone, "recon_bias": w.recon_bias, "rdo_lambda": 0.12}}
    extra = {}
    if postfilter:
        arch = postfilter_arch(w, channels=4, layers=3)
        manifest["postfilter"] = {"architecture": arch, "file": "postfilter.npz", "wavelet": "cdf97"}
        model = build_postfilter(w, arch=arch)
        rng = np.random.default_rng(2)
        # Nonzero weights everywhere (an untrained filter is the identity, which would test nothing).
        model.set_weights([0.3 * rng.standard_normal(v.shape).astype(np.float32) for v in model.get_weights()])
        path.mkdir(parents=True)
        save_postfilter(model, path / "postfilter.npz")
    save_bundle(path, manifest, weights, tables, extra)
    return path


def test_export_tiny_bundle(tmp_path):
    src = _tiny_bundle(tmp_path / "src")
    id_before = model_id_of(src)
    out = tmp_path / "out"
    section = export_transforms(src, out)
    assert model_id_of(src) == id_before and not (src / "encoder.tflite").exists()
    assert model_id_of(out) != id_before  # the .tflite files are part of the model id
    keys = ["cdf97_L1", "cdf97_L2", "cdf97_L3", "haar_L1", "haar_L2", "haar_L3"]
    assert section["signature_order"] == keys
    assert json.loads((out / "manifest.json").read_text())["tflite"] == section
    assert load_bundle(out).manifest["tflite"]["postfilter"] == {"cdf97": False, "haar": False}

    enc, dec = (out / "encoder.tflite").read_bytes(), (out / "decoder.tflite").read_bytes()
    for model in (enc, dec):
        assert sorted(_interpreter_class()(model_content=model).get_signature_list()) == keys
        ops = op_names(model)
        assert ops and all(op.isupper() and not op.startswith("FLEX") for op in ops), ops
        assert not {"CUSTOM", "DELEGATE"} & ops

    cfg = CodecConfig().wavelet
    rng = np.random.default_rng(3)
    for name in ("cdf97", "haar"):
        wt = WaveletTransforms(dataclasses.replace(cfg, wavelet=name))
        for rows, cols in [(64, 96), (40, 24)]:
            plane = rng.random((rows, cols), dtype=np.float32)
            bands = wt.analysis(plane, 3)
            got = run_signature(enc, f"{name}_L3", {"plane": plane[None, :, :, None]})
            for g, e in zip(got, join_details(bands)):
                np.testing.assert_allclose(g, e, rtol=0, atol=TOL)
            (y,) = run_signature(dec, f"{name}_L3", join_details(bands) + [np.array([0.01], np.float32)])
            np.testing.assert_allclose(y[0, :, :, 0], wt.synthesis(bands, 3), rtol=0, atol=TOL)
            np.testing.assert_allclose(y[0, :, :, 0], plane, rtol=0, atol=TOL)
    assert verify_export(out, shapes=((16, 24),))["max_abs_diff"] <= TOL


def test_export_with_postfilter_float32_and_float16(tmp_path):
    src = _tiny_bundle(tmp_path / "src", postfilter=True)
    section = export_transforms(src, quant="float32")
    assert section["postfilter"] == {"cdf97": True, "haar": False}
    report = verify_export(src, shapes=((32, 48),), step=0.05)
    assert report["max_abs_diff"] <= TOL, report

    out = tmp_path / "f16"
    section = export_transforms(src, out, quant="float16")
    assert section["quantization"] == "float16"
    report = verify_export(out, shapes=((32, 48),), step=0.05)
    # The lifting stays float32: haar (no post-filter) and every encoder are exact.
    assert max(v["encoder"] for k, v in report.items() if k != "max_abs_diff") <= TOL
    assert max(v["decoder"] for k, v in report.items() if k.startswith("haar")) <= TOL
    pf_diff = max(v["decoder"] for k, v in report.items() if k.startswith("cdf97"))
    assert 0 < pf_diff <= 5e-3, report  # float16 kernels; this random filter's correction is O(1)
    assert "DEQUANTIZE" in op_names(out / "decoder.tflite") and "DEQUANTIZE" not in op_names(src / "decoder.tflite")


def test_int8_refused(tmp_path):
    src = _tiny_bundle(tmp_path / "src")
    with pytest.raises(ValueError, match="lifting"):
        export_transforms(src, quant="int8")
    with pytest.raises(ValueError, match="quantization"):
        export_transforms(src, quant="bf16")
    with pytest.raises(RuntimeError, match="export_transforms"):
        verify_export(src)


def test_workstation_stream_decodes_identically_on_the_edge(tmp_path):
    """One format, one coder: the workstation and the edge write the same bytes, and every decoder
    (Keras, TFLite with XNNPACK, TFLite reference kernels) reads them to the same pixels up to the
    post-filter's last-bit float differences."""
    from data.image import Image
    from edge_runtime.codec import decode_image, encode_image
    from edge_runtime.runtime import load_codec
    from keras_codec.evaluate import workstation_coder

    src = _tiny_bundle(tmp_path / "src", postfilter=True)
    export_transforms(src, quant="float32")
    bundle = load_bundle(src)
    ws = workstation_coder(bundle)
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:48, 0:64]
    px = np.clip(2000 + 1500 * np.sin(x / 5.0) * np.cos(y / 7.0) + rng.normal(0, 30, x.shape), 0, 4095)
    img = Image(pixels=px.astype(np.uint16)[None, :, :, None], bits_stored=12, signed=False)
    outs = {}
    for q in (8, 16):
        data_ws = encode_image(img, coder=ws, model_id=bundle.model_id, quality=q)
        for kernels in ("xnnpack", "reference"):
            _b, edge = load_codec(src, kernels=kernels)
            assert encode_image(img, coder=edge, model_id=bundle.model_id, quality=q) == data_ws
            outs[kernels] = decode_image(data_ws, coder=edge, model_ids=[bundle.model_id])[0].pixels
        keras_px = decode_image(data_ws, coder=ws, model_ids=[bundle.model_id])[0].pixels
        # The entropy decoding is exact everywhere (integer table indices). The float
        # post-filter's convolutions may differ in the last bit between kernel libraries,
        # so a pixel sitting on a rounding boundary may move by one stored unit.
        for other in (outs["reference"], keras_px):
            diff = np.abs(outs["xnnpack"].astype(np.int64) - other)
            assert diff.max() <= 1 and (diff == 0).mean() > 0.99

    from data.writers import write_png
    from export.tflite_export import test_split_report

    folder = tmp_path / "imgs"
    folder.mkdir()
    write_png(folder / "a.png", img)
    (row,) = test_split_report(src, qualities=(12,), folder=folder, progress=lambda *_: None)
    assert row["same_stream"] and row["bpp_keras"] == row["bpp_tflite"]
    assert abs(row["psnr_tflite"] - row["psnr_keras"]) < 0.01
