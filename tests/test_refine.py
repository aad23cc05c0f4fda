"""The learned lifting refinement: exact wavelet at initialization, exact inverse whatever its weights,
the same predictions in Keras and in the numpy float64 path, a trainer whose loss goes down."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from edge_runtime import exact_dwt
from edge_runtime import refine as exact_refine
from keras_codec.layers import DWT2D
from keras_codec.models.refine import build_refinement, refine_arch, refine_macs, save_refinement


def _random_weights(r, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    r.set_weights([rng.normal(0, scale, w.shape).astype(np.float32) for w in r.get_weights()])


def _plane(shape=(64, 96), seed=1):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:shape[0], :shape[1]]
    p = 0.5 + 0.3 * np.sin(x / 7.0) * np.cos(y / 5.0) + 0.2 * (x > shape[1] // 2) + 0.02 * rng.normal(size=shape)
    return p.astype(np.float32)[None, :, :, None]


def test_untrained_refinement_is_the_wavelet():
    r = build_refinement("cdf97", 4, "symmetric", 6, 3)
    x = tf.constant(_plane())
    got = r.analysis(x, 4)
    want = DWT2D("cdf97", 4, "symmetric")(x)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("levels", [1, 3])
def test_refined_pair_is_an_exact_inverse_with_any_weights(levels):
    r = build_refinement("cdf97", 3, "symmetric", 6, 3)
    _random_weights(r)
    x = tf.constant(_plane())
    bands = r.analysis(x, levels)
    plain = DWT2D("cdf97", levels, "symmetric")(x)
    assert max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(bands[1:], plain[1:])) > 1e-3  # it does act
    y = r.synthesis(bands, levels)
    assert float(tf.reduce_max(tf.abs(y - x))) < 1e-5


@pytest.mark.parametrize("channels", [5, [3, 5, 6]])
def test_integer_edge_path_follows_keras(tmp_path, channels):
    """With one width for every level or one per level (finest first), as the edge reads them off the weights."""
    levels = 3
    r = build_refinement("cdf97", levels, "symmetric", channels, 3)
    _random_weights(r, seed=2)
    save_refinement(r, tmp_path / "refine.npz")
    ex = exact_refine.ExactRefinement.load(tmp_path / "refine.npz", 3, levels)
    x = tf.constant(_plane((32, 48)))
    bands = r.analysis(x, levels)
    ll = bands[0].numpy()[0, :, :, 0]
    pred_np = np.stack(ex.predict(ll, levels), -1)
    pred_tf = r.predictors[levels - 1](bands[0]).numpy()[0]
    # The edge's predictor is an integer network (weights and activations at 2^-16): close, not equal.
    np.testing.assert_allclose(pred_np, pred_tf, atol=2e-4 * max(1.0, np.abs(pred_tf).max()))
    finest = np.asarray(r.dwt1(x)[0])  # level 1's own predictor, whose width may differ from the others'
    np.testing.assert_allclose(np.stack(ex.predict(finest[0, :, :, 0], 1), -1), r.predictors[0](finest).numpy()[0],
                               atol=2e-4 * max(1.0, float(np.abs(r.predictors[0](finest).numpy()).max())))
    trios = [tuple(b.numpy()[0, :, :, i].astype(np.float64) for i in range(3)) for b in bands[1:]]
    y_np = exact_refine.synthesis([ll.astype(np.float64)] + trios, levels, ex)
    np.testing.assert_allclose(y_np, x.numpy()[0, :, :, 0], atol=2e-3)
    # Zero weights: the exact path is the plain float64 lifting, bit for bit.
    zero = exact_refine.ExactRefinement([[(np.zeros_like(k), np.zeros_like(b)) for k, b in lv] for lv in ex.levels])
    plain = exact_dwt.synthesis([ll] + trios, levels)
    np.testing.assert_array_equal(exact_refine.synthesis([ll] + trios, levels, zero), plain)


@pytest.mark.parametrize("channels", [4, [2, 4, 4]])
def test_saved_refinement_reloads_identically(tmp_path, channels):
    from edge_runtime.bundle import load_bundle
    from keras_codec.models.refine import load_refinement

    r = build_refinement("cdf97", 3, "symmetric", channels, 3)
    _random_weights(r, seed=3)
    folder = tmp_path / "b"
    folder.mkdir()
    save_refinement(r, folder / "refine.npz")
    manifest = json.loads(json.dumps({"refine": {**refine_arch(channels, 3, "cdf97", 3), "file": "refine.npz"},
                                      "codec": {"mode": "symmetric"}}))
    bundle = type("B", (), {"manifest": manifest, "path": folder})()
    r2 = load_refinement(bundle, "cdf97")
    assert load_refinement(bundle, "haar") is None
    x = tf.constant(_plane())
    for a, b in zip(r.analysis(x, 3), r2.analysis(x, 3)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    json.dumps(manifest)  # the manifest entry is plain JSON
    assert load_bundle  # imported for its side effect of checking the module loads


def test_macs_budget_is_small():
    assert refine_macs(8, 3) < 400
    assert refine_macs([8] * 7, 3) == refine_macs(8, 3)  # one width per level: the same sum, level by level
    assert refine_macs([4] + [8] * 6, 3) == 144  # level 1 (3/4 of the predictors' pixels) at half the width


@pytest.mark.parametrize("channels", [[4, 8], [4, 0, 8], 0])
def test_per_level_widths_are_checked(channels):
    from keras_codec.models.refine import level_channels

    with pytest.raises(ValueError, match="one per level"):
        level_channels(channels, 3)
    assert level_channels([2, 4, 4], 3) == [2, 4, 4] and level_channels(8, 2) == [8, 8]


def test_refine_trainer_loss_goes_down(tmp_path):
    """A tiny refinement trained a few steps on one batch lowers the rate-distortion loss."""
    from edge_runtime.bundle import load_bundle
    from keras_codec.training import refine as tr

    bundle = load_bundle("edge_runtime/models/default")
    cfg = tr._training_config(bundle.manifest, 0, 4, 3e-3, 32, 4)
    model = tr._trainer(cfg, refine_arch(4, 3, "cdf97", 7), bundle.coding.weights.detail)
    x = tf.constant(np.concatenate([_plane((32, 32), seed=s) for s in range(4)]))
    tf.random.set_seed(0)
    first = float(model.rd_terms(x)["loss"])
    opt = tf.keras.optimizers.Adam(3e-3)
    variables = model.stage_variables("joint")
    for _ in range(30):
        with tf.GradientTape() as tape:
            loss = model.rd_terms(x, training=False)["loss"]
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
    last = float(model.rd_terms(x)["loss"])
    assert np.isfinite(last) and last < first


def test_refined_bundle_exports_codes_and_bounds(tmp_path):
    """A bundle with a (random, nonzero) refinement: TFLite = Keras, the edge writes the workstation's
    bytes, and the error-bounded mode, whose base goes through the float64 refined synthesis, keeps its bound."""
    import shutil

    from data.image import Image
    from edge_runtime.bundle import load_bundle, save_bundle
    from edge_runtime.codec import decode_image, encode_image
    from edge_runtime.entropy import laplace_tables
    from edge_runtime.runtime import load_codec
    from export.conversion import export_transforms
    from export.verify import verify_export
    from keras_codec.config import CodecConfig
    from keras_codec.models.default import DefaultCodec
    from edge_runtime import context as ctx

    w = CodecConfig().wavelet
    src = tmp_path / "b"
    src.mkdir()
    r = build_refinement("cdf97", 3, "symmetric", 4, 3)
    _random_weights(r, seed=4, scale=0.2)
    save_refinement(r, src / "refine.npz")
    shutil.copyfile("edge_runtime/models/default/residual.npz", src / "residual.npz")
    manifest = {"config": CodecConfig().to_dict(),
                "codec": {"transforms": ["cdf97", "haar"], "levels": 3, "mode": w.mode, "wavelet": "cdf97",
                          "deadzone": w.deadzone, "recon_bias": w.recon_bias, "rdo_lambda": 0.12},
                "refine": {**refine_arch(4, 3, "cdf97", 3), "file": "refine.npz"}}
    detail = np.zeros((3, 3, 3, ctx.NUM_FEATURES), np.int64)
    detail[..., 0] = 30 << ctx.SHIFT
    save_bundle(src, manifest, ctx.ContextWeights(detail, np.zeros((3, 2), np.int64)),
                laplace_tables(w.num_scales, w.scale_min, w.scale_max, w.deadzone))
    export_transforms(src, quant="float32")
    assert verify_export(src, shapes=((32, 48),))["max_abs_diff"] <= 1e-4
    bundle = load_bundle(src)
    assert bundle.refine is not None
    ws = DefaultCodec.from_bundle(bundle).coder
    _b, edge = load_codec(src)
    rng = np.random.default_rng(6)
    y, x = np.mgrid[0:40, 0:56]
    px = np.clip(2000 + 1500 * np.sin(x / 5.0) * np.cos(y / 7.0) + rng.normal(0, 20, x.shape), 0, 4095)
    img = Image(pixels=px.astype(np.uint16)[None, :, :, None], bits_stored=12, signed=False)
    data = encode_image(img, coder=ws, model_id=bundle.model_id, quality=14)
    assert encode_image(img, coder=edge, model_id=bundle.model_id, quality=14) == data
    a = decode_image(data, coder=edge, model_ids=[bundle.model_id])[0].pixels.astype(np.int64)
    b = decode_image(data, coder=ws, model_ids=[bundle.model_id])[0].pixels.astype(np.int64)
    assert np.abs(a - b).max() <= 1  # Keras: the float network; the edge: its integer version
    _b, edge_ref = load_codec(src, kernels="reference")
    assert edge.transforms["cdf97"].refine is not None  # decoded by the integer network, not decoder.tflite
    assert np.array_equal(decode_image(data, coder=edge_ref, model_ids=[bundle.model_id])[0].pixels, a)
    for d in (0, 3):
        stream = encode_image(img, coder=edge, model_id=bundle.model_id, quality=None, max_error=d)
        out = decode_image(stream, coder=edge, model_ids=[bundle.model_id])[0].pixels.astype(np.int64)
        assert np.abs(out - img.pixels).max() <= d
