"""Tests of the tf.data training pipeline on tiny synthetic images."""
import math

import numpy as np
import pytest
import tensorflow as tf

from data.image import Image
from data.pipeline import NormParams, _resample, eval_planes, make_dataset, planes_from_image

PATCH = 16


def _image(shape, dtype=np.uint16, low=0, high=4096, seed=0, signed=False):
    pixels = np.random.default_rng(seed).integers(low, high, shape).astype(dtype)
    return Image(pixels=pixels, bits_stored=12, signed=signed)


@pytest.fixture(scope="module")
def images():
    return [_image((1, 40, 50, 1), seed=1), _image((2, 24, 30, 1), seed=2), _image((1, 20, 36, 3), seed=3)]


def _first(images, **kwargs):
    kwargs.setdefault("patch_size", PATCH)
    kwargs.setdefault("batch_size", 4)
    return next(iter(make_dataset(images, **kwargs))).numpy()


def _find(patch, planes):
    """Index of the plane that holds ``patch`` as an exact crop, or None."""
    for k, plane in enumerate(planes):
        windows = np.lib.stride_tricks.sliding_window_view(plane, patch.shape)
        if np.any(np.all(windows == patch, axis=(2, 3))):
            return k
    return None


@pytest.mark.parametrize("kwargs", [{}, {"augment": False}, {"max_angle": 10.0}, {"scale": None}])
def test_shapes_dtype_and_range(images, kwargs):
    dataset = make_dataset(images, patch_size=PATCH, batch_size=4, **kwargs)
    assert dataset.element_spec.shape == (4, PATCH, PATCH, 1)
    for batch in dataset.take(3):
        assert batch.dtype == tf.float32
        values = batch.numpy()
        assert values.min() >= 0.0 and values.max() <= 1.0


@pytest.mark.parametrize("kwargs", [{}, {"max_angle": 10.0}])
def test_same_seed_same_batches_other_seed_differs(images, kwargs):
    first = _first(images, seed=7, **kwargs)
    np.testing.assert_array_equal(first, _first(images, seed=7, num_parallel_calls=1, **kwargs))
    assert not np.array_equal(first, _first(images, seed=8, **kwargs))


def test_test_split_refused(images):
    with pytest.raises(ValueError, match="test"):
        make_dataset(split="test")
    with pytest.raises(ValueError, match="test"):
        make_dataset(images, split="test")


def test_bad_arguments(images):
    with pytest.raises(ValueError):
        make_dataset([])
    with pytest.raises(ValueError):
        make_dataset(images, scale=(1.25, 0.8))
    with pytest.raises(ValueError):
        make_dataset(images, patch_size=0)


@pytest.mark.parametrize("dtype, low, high", [(np.uint16, 0, 65536), (np.int16, -32768, 32768),
                                              (np.uint8, 0, 256)])
def test_norm_params_round_trip_exact(dtype, low, high):
    stored = np.random.default_rng(0).integers(low, high, (64, 64)).astype(dtype)
    stored.flat[:2] = [low, high - 1]
    params = NormParams.from_plane(stored)
    x = params.normalize(stored)
    assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(params.denormalize(x, dtype), stored)
    np.testing.assert_array_equal(np.rint(params.denormalize(x)), stored)


def test_constant_plane_has_unit_scale():
    stored = np.full((8, 8), -5, np.int16)
    params = NormParams.from_plane(stored)
    assert params == NormParams(offset=-5.0, scale=1.0)
    assert not params.normalize(stored).any()
    np.testing.assert_array_equal(params.denormalize(params.normalize(stored), np.int16), stored)


def test_one_plane_per_frame_and_sample():
    image = _image((2, 12, 10, 3), seed=4)
    planes = planes_from_image(image)
    assert len(planes) == 6
    for k, (plane, params) in enumerate(planes):
        frame, sample = divmod(k, 3)
        assert plane.shape == (12, 10) and plane.dtype == np.float32
        stored = image.pixels[frame, :, :, sample]
        np.testing.assert_array_equal(params.denormalize(plane, np.uint16), stored)


def test_signed_planes_normalize_to_unit_range():
    image = _image((1, 9, 9, 1), np.int16, -2048, 2048, signed=True)
    (plane, params), = planes_from_image(image)
    assert plane.min() == 0.0 and plane.max() == 1.0
    assert params.offset == image.pixels.min()


def test_small_planes_padded_by_reflection():
    image = _image((1, 10, 20, 1), seed=5)
    (plane, _), = planes_from_image(image, min_size=PATCH)
    (original, _), = planes_from_image(image)
    assert plane.shape == (PATCH, 20)
    np.testing.assert_array_equal(plane[:10], original)
    np.testing.assert_array_equal(plane[10:], original[8:2:-1])
    batch = _first([image], augment=False)
    assert all(_find(patch[..., 0], [plane]) is not None for patch in batch)


def test_without_augmentation_patches_are_exact_crops(images):
    planes = [plane for image in images for plane, _ in planes_from_image(image, min_size=PATCH)]
    batch = _first(images, augment=False, batch_size=32)
    assert all(_find(patch[..., 0], planes) is not None for patch in batch)


def test_planes_drawn_in_proportion_to_area():
    large, small = _image((1, 64, 64, 1), seed=6), _image((1, 32, 32, 1), seed=7)
    planes = [planes_from_image(image)[0][0] for image in (large, small)]
    batches = make_dataset([large, small], patch_size=PATCH, batch_size=50, augment=False).take(4)
    sources = [_find(patch[..., 0], planes) for batch in batches for patch in batch.numpy()]
    share = sources.count(0) / len(sources)
    assert abs(share - 0.8) < 0.1  # areas 4096 : 1024


def test_mirror_and_rotation_keep_exact_pixels(images):
    """Multiples of 90° and flips only permute pixels: each patch is a dihedral copy of a crop."""
    planes = [plane for image in images for plane, _ in planes_from_image(image, min_size=PATCH)]
    batch = _first(images, scale=None, batch_size=16)
    for patch in batch[..., 0]:
        variants = [np.rot90(p, k) for p in (patch, patch[:, ::-1]) for k in range(4)]
        assert any(_find(v, planes) is not None for v in variants)


def test_resample_identity_and_quarter_turn():
    region = tf.random.stateless_uniform([PATCH + 2, PATCH + 2], seed=[1, 2])
    centre = region.numpy()[1:-1, 1:-1]
    np.testing.assert_allclose(_resample(region, PATCH, tf.constant(1.0), tf.constant(0.0)).numpy(),
                               centre, atol=1e-6)
    turned = _resample(region, PATCH, tf.constant(1.0), tf.constant(math.pi / 2)).numpy()
    assert any(np.allclose(turned, np.rot90(centre, k), atol=1e-5) for k in (1, 3))


def test_finite_epoch_covers_the_area_once(images):
    dataset = make_dataset(images, patch_size=PATCH, batch_size=4, repeat=False)
    area = 40 * 50 + 2 * 24 * 30 + 3 * 20 * 36
    assert sum(1 for _ in dataset) == math.ceil(area / PATCH**2 / 4)


def test_eval_planes_names_every_plane(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("data.corpus")
    items = {"a.dcm": _image((1, 8, 8, 1)), "b.dcm": _image((2, 8, 8, 1))}
    fake.corpus = lambda split="train": [types.SimpleNamespace(name=n) for n in items]
    fake.load = lambda item: items[item.name]
    monkeypatch.setitem(sys.modules, "data.corpus", fake)
    names = [name for name, _, _ in eval_planes("test")]
    assert names == ["a.dcm", "b.dcm[frame 0, sample 0]", "b.dcm[frame 1, sample 0]"]
