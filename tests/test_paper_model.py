"""The `paper` model: shapes, training signal, checkpoints, coding round trips, TFLite export."""
import numpy as np
import pytest
import tensorflow as tf

from keras_codec.config import CodecConfig
from keras_codec.models import PaperCodec, build_paper
from keras_codec.models.paper import MS_SSIM_WEIGHTS, ms_ssim, to_tiles

TILE, LATENT = 32, 16
CONFIG = CodecConfig(name="paper").replace(
    **{"paper.tile": TILE, "paper.filters": (4, 8), "paper.dense_units": 32, "paper.latent_dim": LATENT,
       "train.ssim_weight": 0.1})


def smooth_batch(n=4, size=TILE, seed=0):
    """Blurred noise in [0, 1]: image-like content for a tiny model to fit."""
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.random((n, size // 4, size // 4, 1)), tf.float32)
    return tf.image.resize(x, (size, size), "bilinear").numpy()


@pytest.fixture(scope="module")
def coded_model():
    tf.keras.utils.set_random_seed(1)
    model = build_paper(CONFIG)
    model.build_tables()
    return model


def test_shapes():
    tf.keras.utils.set_random_seed(0)
    model = build_paper(CONFIG)
    x = smooth_batch()
    y = model.analysis(x)
    assert y.shape == (4, LATENT)
    assert model.synthesis(y).shape == x.shape
    assert to_tiles(smooth_batch(2, 2 * TILE + 5), TILE).shape == (8, TILE, TILE, 1)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="multiple"):
        build_paper(CONFIG.replace(**{"paper.tile": 40}))


def test_rd_terms_finite_and_stage_variables():
    tf.keras.utils.set_random_seed(0)
    model = build_paper(CONFIG)
    for training in (True, False):
        terms = model.rd_terms(smooth_batch(), training=training)
        assert set(terms) == {"loss", "bpp", "mse", "psnr", "ms_ssim"}
        for value in terms.values():
            assert value.shape == () and np.isfinite(value.numpy())
        assert terms["bpp"] > 0
    entropy = model.stage_variables("entropy")
    assert entropy and all(any(v is w for w in model.trainable_variables) for v in entropy)
    assert len(model.stage_variables("joint")) == len(model.trainable_variables) > len(entropy)
    with pytest.raises(ValueError):
        model.stage_variables("nope")


def test_ms_ssim_matches_tensorflow():
    x = smooth_batch(seed=1)
    y = np.clip(x + 0.05 * np.random.default_rng(2).standard_normal(x.shape), 0, 1).astype(np.float32)
    ours = ms_ssim(x, y).numpy()
    ref = tf.image.ssim_multiscale(x, y, 1.0, power_factors=MS_SSIM_WEIGHTS, filter_size=8).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_adam_steps_reduce_loss():
    tf.keras.utils.set_random_seed(0)
    model = build_paper(CONFIG)
    x = smooth_batch(8)
    opt = tf.keras.optimizers.Adam(1e-3)
    variables = model.stage_variables("joint")

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = model.rd_terms(x, training=True)["loss"]
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        return loss

    losses = [float(step()) for _ in range(30)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_checkpoint_reload_gives_identical_outputs(tmp_path):
    tf.keras.utils.set_random_seed(0)
    model = build_paper(CONFIG)
    x = smooth_batch()
    # One training step so BatchNorm statistics and the prior differ from a fresh model.
    opt = tf.keras.optimizers.Adam(1e-2)
    with tf.GradientTape() as tape:
        loss = model.rd_terms(x, training=True)["loss"]
    variables = model.stage_variables("joint")
    opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
    model.save_weights(str(tmp_path / "ckpt"))

    fresh = build_paper(CONFIG)
    before = fresh.analysis(x, training=False).numpy()
    fresh.load_weights(str(tmp_path / "ckpt")).assert_existing_objects_matched()
    y = model.analysis(x, training=False).numpy()
    assert not np.array_equal(before, y)
    np.testing.assert_array_equal(fresh.analysis(x, training=False).numpy(), y)
    np.testing.assert_array_equal(fresh.synthesis(y, training=False).numpy(),
                                  model.synthesis(y, training=False).numpy())
    grid = np.linspace(-3, 3, 7, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(fresh.prior.prob(grid).numpy(), model.prior.prob(grid).numpy())


def test_checkpoint_restores_entropy_tables(coded_model, tmp_path):
    coded_model.save_weights(str(tmp_path / "ckpt"))
    fresh = build_paper(CONFIG)
    fresh.build_tables()
    fresh.load_weights(str(tmp_path / "ckpt")).assert_consumed()
    ours, theirs = coded_model.entropy_tables(), fresh.entropy_tables()
    for key in ours:
        np.testing.assert_array_equal(theirs[key], ours[key])


def test_coding_before_tables_fails_loudly():
    model = build_paper(CONFIG)
    with pytest.raises(RuntimeError, match="build_tables"):
        model.compress_tiles(smooth_batch())


def test_compression_round_trip_equals_quantized_forward(coded_model):
    x = smooth_batch(6, seed=3)
    symbols = coded_model.compress_tiles(x)
    assert symbols.dtype == np.int32 and symbols.shape == (6, LATENT)
    np.testing.assert_array_equal(coded_model.decompress_tiles(symbols), coded_model.reconstruct(x))
    # The quantizer is the coder's: round around its offsets, not plain round().
    offset = coded_model.entropy_tables()["offset"]
    y = coded_model.analysis(x, training=False).numpy()
    np.testing.assert_array_equal(symbols, np.round(y - offset).astype(np.int32))


def test_entropy_tables_and_estimated_bits(coded_model):
    tables = coded_model.entropy_tables()
    for key in ("cdf", "cdf_length", "cdf_offset", "precision"):
        assert np.issubdtype(np.asarray(tables[key]).dtype, np.integer), key
    cdf, lengths = tables["cdf"], tables["cdf_length"]
    assert cdf.shape[0] == lengths.shape[0] == tables["cdf_offset"].shape[0] == LATENT
    top = 1 << int(tables["precision"])
    for row, n in zip(cdf, lengths):
        assert row[0] == 0 and row[n - 1] == top and np.all(np.diff(row[:n]) > 0)

    symbols = coded_model.compress_tiles(smooth_batch(seed=4))
    bits = coded_model.estimated_bits(symbols)
    assert bits.shape == (4,) and np.all(np.isfinite(bits)) and np.all(bits > 0)
    # The evaluation rate (prior density of the coder's quantized latents) agrees with the tables.
    bpp = float(coded_model.rd_terms(smooth_batch(seed=4))["bpp"])
    np.testing.assert_allclose(bits.sum() / (4 * TILE * TILE), bpp, rtol=0.02)
    # Far outside the tables: escape symbol plus a longer code.
    far = coded_model.estimated_bits(symbols + 1000)
    assert np.all(np.isfinite(far)) and np.all(far > bits)


def test_synthesis_converts_to_tflite_builtins(coded_model):
    from edge_runtime.tflite_runner import interpreter_module

    Interpreter = interpreter_module().Interpreter
    converter = tf.lite.TFLiteConverter.from_keras_model(coded_model.synthesis)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    y = np.random.default_rng(5).normal(0, 2, (3, LATENT)).round().astype(np.float32)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], y.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], y)
    interpreter.invoke()
    got = interpreter.get_tensor(out["index"])
    np.testing.assert_allclose(got, coded_model.synthesis(y, training=False).numpy(), atol=1e-4)


@pytest.mark.parametrize("shape", [(TILE, TILE), (45, 70), (7, 3)])
def test_whole_image_round_trip_shape(coded_model, shape):
    plane = np.random.default_rng(6).random(shape).astype(np.float32)
    symbols, grid, pad = coded_model.encode_image(plane)
    assert symbols.shape == (grid[0] * grid[1], LATENT)
    out = coded_model.decode_image(symbols, grid, pad)
    assert out.shape == shape and out.dtype == np.float32
    with pytest.raises(ValueError, match="tile grid"):
        coded_model.decode_image(symbols, (grid[0] + 1, grid[1]), pad)


def test_is_a_keras_model():
    assert isinstance(build_paper(CONFIG), tf.keras.Model)
    assert issubclass(PaperCodec, tf.keras.Model)
