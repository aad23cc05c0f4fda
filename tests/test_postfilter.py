"""The decoder post-filter of the `default` model: identity at init, trainable, saved and loaded via the bundle."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from data.image import Image
from edge_runtime.bundle import default_bundle_path, load_bundle
from edge_runtime.codec import PlaneCoder, decode_image, encode_image, levels_for, quantizer_step
from keras_codec.config import CodecConfig, WaveletConfig
from keras_codec.models.wavelet import (WaveletTransforms, build_functional_codec, build_postfilter, load_postfilter,
                                        postfilter_arch, postfilter_macs, save_postfilter)
from keras_codec.training.postfilter import PostFilterTrainer, write_bundle_copy

CFG = WaveletConfig()
TINY = postfilter_arch(CFG, channels=4, layers=2)


def _smooth(rng, shape):
    y, x = np.mgrid[: shape[0], : shape[1]]
    v = np.sin(x / 5.0) * np.cos(y / 9.0) + (x > shape[1] // 2) * 0.8 + 0.03 * rng.normal(size=shape)
    return ((v - v.min()) / (v.max() - v.min())).astype(np.float32)


def _perturbed(model, seed=0, scale=0.05):
    rng = np.random.default_rng(seed)
    model.set_weights([w + scale * rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def test_macs_per_pixel_of_the_default_architecture():
    arch = postfilter_arch(CFG, channels=12, layers=3)
    assert arch["macs_per_pixel"] == postfilter_macs(12, 3) == 9 * 12 + 9 * 144 + 9 * 12 + 2
    assert arch["macs_per_pixel"] <= 1600


@pytest.mark.parametrize("shape", [(64, 64), (40, 72)])
def test_zero_init_postfilter_is_the_identity(shape):
    rng = np.random.default_rng(0)
    pf = build_postfilter(CFG, arch=postfilter_arch(CFG, channels=12, layers=3))
    levels = levels_for(*shape, CFG.levels)
    pr, pc = -(-shape[0] // (1 << levels)) * (1 << levels), -(-shape[1] // (1 << levels)) * (1 << levels)
    x = rng.random((pr, pc)).astype(np.float32)
    # Keras functional codec with quantization off.
    model = build_functional_codec(CFG, pr, pc, levels, postfilter=pf)
    assert np.max(np.abs(model(x[None, :, :, None]).numpy()[0, :, :, 0] - x)) < 1e-5
    # The coder's transforms: analysis then synthesis through the (untrained) filter, at every step.
    t = WaveletTransforms(CFG, postfilter=pf)
    bands = t.analysis(x, levels)
    for q in (1, 12):
        assert np.max(np.abs(t.synthesis(bands, levels, step=quantizer_step(q)) - x)) < 1e-5
    with pytest.raises(ValueError, match="step"):
        t.synthesis(bands, levels)


def test_tiny_postfilter_trains():
    rng = np.random.default_rng(1)
    cfg = CodecConfig()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, patch_size=32))
    model = PostFilterTrainer(cfg, TINY, deadzone=0.2, recon_bias=0.0, levels=5)
    x = tf.constant(np.stack([_smooth(rng, (32, 32)) for _ in range(12)])[..., None])
    model.rd_terms(x)
    opt = tf.keras.optimizers.Adam(3e-3)
    variables = model.postfilter.trainable_variables

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            terms = model.rd_terms(x, training=False)  # every quality level in turn: a fixed objective
        opt.apply_gradients(zip(tape.gradient(terms["loss"], variables), variables))
        return terms

    first = step()
    for _ in range(150):
        last = step()
    assert float(last["loss"]) < 0.98 * float(first["loss"])
    assert float(last["bpp"]) == 0.0 and float(last["gain_db"]) > 0.0


def test_weights_round_trip_through_the_bundle(tmp_path):
    pf = _perturbed(build_postfilter(CFG, arch=TINY))
    weights = tmp_path / "pf.npz"
    save_postfilter(pf, weights)
    entry = {"file": "postfilter.npz", "architecture": TINY, "wavelet": "cdf97", "steps": 0, "seed": 0}
    folder = write_bundle_copy(default_bundle_path(), tmp_path / "bundle", weights, entry)
    bundle = load_bundle(folder)
    loaded = load_postfilter(bundle)
    assert loaded is not None and load_postfilter(bundle, "haar") is None
    y = np.random.default_rng(2).random((2, 24, 40, 1)).astype(np.float32)
    ls = np.full((2, 1), np.log10(quantizer_step(4)), np.float32)
    np.testing.assert_array_equal(loaded([y, ls]).numpy(), pf([y, ls]).numpy())


def test_filtered_decode_has_the_right_shape_and_dtype():
    rng = np.random.default_rng(3)
    px = np.round(_smooth(rng, (48, 56)) * 4095).astype(np.uint16)[None, :, :, None]
    img = Image(pixels=px, bits_stored=12, signed=False, photometric="MONOCHROME2")
    bundle = load_bundle(default_bundle_path())
    params = bundle.manifest["codec"]
    plain = PlaneCoder(params, bundle.coding, WaveletTransforms(CFG))
    pf = _perturbed(build_postfilter(CFG, arch=TINY), scale=0.2)
    filtered = PlaneCoder(params, bundle.coding, WaveletTransforms(CFG, postfilter=pf))
    data = encode_image(img, coder=plain, model_id=bundle.model_id, quality=3)
    a, _ = decode_image(data, coder=plain, model_ids=[bundle.model_id])
    b, _ = decode_image(data, coder=filtered, model_ids=[bundle.model_id])
    assert b.pixels.shape == px.shape and b.pixels.dtype == px.dtype
    assert not np.array_equal(a.pixels, b.pixels)


def test_fine_tuning_starts_from_the_bundles_filter_behind_its_refinement(tmp_path):
    """--init-from-bundle: a step at learning rate 0 leaves the shipped filter as it was (trained behind
    the shipped bundle's refined transform); a filter of another shape is refused."""
    from keras_codec.training.postfilter import train_postfilter

    bundle = load_bundle(default_bundle_path())
    arch = bundle.manifest["postfilter"]["architecture"]
    res = train_postfilter(default_bundle_path(), tmp_path / "run", steps=1, batch_size=2, patch_size=32,
                           learning_rate=0.0,
                           channels=arch["channels"], layers=arch["layers"], measure=False, progress=False,
                           init_from_bundle=True)
    assert "initialized_from" in res["entry"] and "--init-from-bundle" in res["entry"]["command"]
    with np.load(res["weights"]) as z, np.load(default_bundle_path() / "postfilter.npz") as ref:
        for k in ref.files:
            np.testing.assert_array_equal(z[k], ref[k])
    with pytest.raises(ValueError, match="same architecture"):
        train_postfilter(default_bundle_path(), tmp_path / "run2", steps=0, channels=arch["channels"] + 1,
                         measure=False, progress=False, init_from_bundle=True)
