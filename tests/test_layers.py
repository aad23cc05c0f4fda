"""Fixed transforms: DCT2D/IDCT2D and DWT2D/IDWT2D against scipy and PyWavelets,
exact inverses, serialization and TFLite conversion with builtin ops only."""

import numpy as np
import pytest
import pywt
import scipy.fft
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_codec.layers import DCT2D, DWT2D, IDCT2D, IDWT2D
from keras_codec.layers.dwt import MODES, PYWT_NAMES, WAVELETS
from export.tflite_utils import run_tflite, to_tflite

# pywt warns that deep levels on tiny test images are all boundary; expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Level value of:UserWarning")

TOL = 1e-5
# First kept coefficient of pywt "reflect" output that lines up with the
# critically sampled whole-sample symmetric lifting (half the filter support).
REFLECT_OFFSET = {"haar": 0, "legall53": 1, "cdf97": 2}


def random_image(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


@pytest.fixture(scope="module")
def ct_image():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    pixels = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(np.float64)
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    return pixels.astype(np.float32)[None, :, :, None]


def blockwise_dctn(x, b):
    n, h, w, c = x.shape
    blocks = x.astype(np.float64).reshape(n, h // b, b, w // b, b, c)
    return scipy.fft.dctn(blocks, axes=(2, 4), norm="ortho").reshape(x.shape)


def pywt_periodization(x, wavelet, levels):
    coeffs = pywt.wavedec2(
        x.astype(np.float64), PYWT_NAMES[wavelet], mode="periodization", level=levels, axes=(1, 2)
    )
    return [coeffs[0]] + [np.concatenate(details, axis=-1) for details in coeffs[1:]]


def pywt_reflect_cropped(x, wavelet, levels):
    """Critically sampled whole-sample symmetric DWT from pywt "reflect", one level at a time."""
    k = REFLECT_OFFSET[wavelet]
    approx, out = x.astype(np.float64), []
    for _ in range(levels):
        h, w = approx.shape[1] // 2, approx.shape[2] // 2
        a, details = pywt.dwt2(approx, PYWT_NAMES[wavelet], mode="reflect", axes=(1, 2))
        crop = lambda t: t[:, k : k + h, k : k + w]  # noqa: E731
        approx = crop(a)
        out.insert(0, np.concatenate([crop(d) for d in details], axis=-1))
    return [approx] + out


def assert_coeffs_close(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        a = np.asarray(a)
        assert a.shape == e.shape
        scale = max(1.0, np.abs(e).max())
        np.testing.assert_allclose(a / scale, e / scale, rtol=0, atol=TOL)


# --- DCT -------------------------------------------------------------------


@pytest.mark.parametrize("block", [4, 8, 16])
def test_dct_matches_scipy_and_inverts(block):
    x = random_image((2, 32, 48, 3), seed=block)
    y = DCT2D(block)(x).numpy()
    assert y.shape == x.shape
    np.testing.assert_allclose(y, blockwise_dctn(x, block), rtol=0, atol=TOL)
    np.testing.assert_allclose(IDCT2D(block)(y).numpy(), x, rtol=0, atol=TOL)


def test_dct_inverts_real_image(ct_image):
    rec = IDCT2D(8)(DCT2D(8)(ct_image)).numpy()
    assert np.abs(rec - ct_image).max() <= TOL


@pytest.mark.parametrize("layer", [DCT2D, IDCT2D])
@pytest.mark.parametrize("shape", [(1, 30, 32, 1), (1, 32, 12, 1), (32, 32, 1)])
def test_dct_wrong_shape_raises(layer, shape):
    with pytest.raises(ValueError, match=r"shape \(.*\)"):
        layer(8)(np.zeros(shape, np.float32))


# --- DWT -------------------------------------------------------------------


@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_dwt_periodization_matches_pywt(wavelet, levels):
    x = random_image((2, 32, 24, 2), seed=levels)
    coeffs = DWT2D(wavelet, levels, "periodization")(x)
    assert_coeffs_close(coeffs, pywt_periodization(x, wavelet, levels))


@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("levels", [1, 3])
def test_dwt_symmetric_matches_cropped_pywt_reflect(wavelet, levels):
    x = random_image((2, 16, 40, 2), seed=levels)
    coeffs = DWT2D(wavelet, levels, "symmetric")(x)
    assert_coeffs_close(coeffs, pywt_reflect_cropped(x, wavelet, levels))


def test_dwt_output_shapes_and_order():
    layer = DWT2D("haar", 2)
    coeffs = layer(np.zeros((3, 16, 8, 2), np.float32))
    shapes = [tuple(t.shape) for t in coeffs]
    assert shapes == [(3, 4, 2, 2), (3, 4, 2, 6), (3, 8, 4, 6)]
    assert [tuple(s) for s in layer.compute_output_shape((None, 16, 8, 2))] == [
        (None, 4, 2, 2),
        (None, 4, 2, 6),
        (None, 8, 4, 6),
    ]


@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("mode", MODES)
def test_dwt_inverts_random_and_real(wavelet, mode, ct_image):
    for x, levels in [(random_image((2, 24, 40, 3)), 3), (ct_image, 4)]:
        rec = IDWT2D(wavelet, levels, mode)(DWT2D(wavelet, levels, mode)(x)).numpy()
        assert np.abs(rec - x).max() <= TOL


@settings(max_examples=30, deadline=None)
@given(
    wavelet=st.sampled_from(WAVELETS),
    mode=st.sampled_from(MODES),
    levels=st.integers(1, 3),
    hk=st.integers(1, 4),
    wk=st.integers(1, 4),
    channels=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_dwt_inverse_property(wavelet, mode, levels, hk, wk, channels, seed):
    f = 2**levels
    x = random_image((1, hk * f, wk * f, channels), seed=seed)
    coeffs = DWT2D(wavelet, levels, mode)(x)
    if mode == "periodization":
        assert_coeffs_close(coeffs, pywt_periodization(x, wavelet, levels))
    rec = IDWT2D(wavelet, levels, mode)(coeffs).numpy()
    assert np.abs(rec - x).max() <= TOL


def test_dwt_wrong_shape_raises():
    with pytest.raises(ValueError, match=r"multiples of 4.*\(1, 12, 10, 1\)"):
        DWT2D("cdf97", 2)(np.zeros((1, 12, 10, 1), np.float32))
    with pytest.raises(ValueError, match=r"shape \(12, 12\)"):
        DWT2D("cdf97", 1)(np.zeros((12, 12), np.float32))
    coeffs = DWT2D("haar", 2)(np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"list of 3 NHWC tensors.*\(1, 2, 2, 1\)"):
        IDWT2D("haar", 2)(coeffs[:2])
    with pytest.raises(ValueError, match=r"details 2 .*\(1, 2, 2, 3\)"):
        IDWT2D("haar", 2)([coeffs[0], coeffs[1], coeffs[1]])


@pytest.mark.parametrize(
    "kwargs",
    [{"wavelet": "db2"}, {"mode": "zero"}, {"levels": 0}],
)
def test_dwt_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        DWT2D(**kwargs)
    with pytest.raises(ValueError):
        IDWT2D(**kwargs)


# --- Serialization -----------------------------------------------------------


@pytest.mark.parametrize(
    "layer",
    [DCT2D(16), IDCT2D(4), DWT2D("legall53", 3, "symmetric"), IDWT2D("haar", 2, "periodization")],
    ids=lambda layer: type(layer).__name__,
)
def test_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert type(restored) is type(layer) and restored.get_config() == config


def test_saved_model_reloads_without_custom_objects(tmp_path):
    inputs = tf.keras.Input((32, 32, 2))
    dct = DCT2D(8)(inputs)
    coeffs = DWT2D("cdf97", 2, "symmetric")(inputs)
    outputs = [dct, IDCT2D(8)(dct), *coeffs, IDWT2D("cdf97", 2, "symmetric")(coeffs)]
    model = tf.keras.Model(inputs, outputs)
    path = str(tmp_path / "transforms.keras")
    model.save(path)
    reloaded = tf.keras.models.load_model(path)

    x = random_image((2, 32, 32, 2))
    for a, b in zip(model(x), reloaded(x)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    names = {type(layer).__name__ for layer in reloaded.layers}
    assert {"DCT2D", "IDCT2D", "DWT2D", "IDWT2D"} <= names


# --- TFLite ------------------------------------------------------------------


def functional(layer, input_shapes):
    inputs = [tf.keras.Input(s) for s in input_shapes]
    return tf.keras.Model(inputs, layer(inputs if len(inputs) > 1 else inputs[0]))


def assert_tflite_matches(model, inputs):
    expected = tf.nest.flatten(model(inputs if len(inputs) > 1 else inputs[0]))
    actual = run_tflite(to_tflite(model), inputs)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == tuple(e.shape)
        np.testing.assert_allclose(a, e.numpy(), rtol=0, atol=TOL * max(1.0, np.abs(e.numpy()).max()))
    return actual


@pytest.mark.parametrize("layer_class", [DCT2D, IDCT2D])
def test_dct_tflite_builtins_match(layer_class):
    x = random_image((2, 16, 24, 3))
    assert_tflite_matches(functional(layer_class(8), [(16, 24, 3)]), [x])


@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("mode", MODES)
def test_dwt_tflite_builtins_match(wavelet, mode):
    x = random_image((2, 16, 24, 3))
    levels = 2
    analysis = functional(DWT2D(wavelet, levels, mode), [(16, 24, 3)])
    assert_tflite_matches(analysis, [x])
    coeffs = [t.numpy() for t in analysis(x)]
    synthesis = functional(IDWT2D(wavelet, levels, mode), [c.shape[1:] for c in coeffs])
    (rec,) = assert_tflite_matches(synthesis, coeffs)
    assert np.abs(rec - x).max() <= TOL
