"""The tf.data training pipeline: normalized grayscale planes, random crops, augmentation.

This is the only module of ``data`` that imports TensorFlow; image I/O and the
edge runtime never import it.

Every frame and every sample (colour channel) of an image becomes one grayscale
plane, min-max normalized to [0, 1] with its own :class:`NormParams`. All planes
are kept in memory in one flat float32 tensor; each training patch is drawn by
stateless random ops keyed by ``(seed, element index)``, so the same seed gives
the same batches on every run, whatever the parallelism.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import tensorflow as tf

from data.image import Image

__all__ = ["NormParams", "planes_from_image", "make_dataset", "eval_planes"]


@dataclass(frozen=True)
class NormParams:
    """Affine map between stored integer values and [0, 1]: x = (v - offset) / scale."""

    offset: float
    scale: float

    @classmethod
    def from_plane(cls, plane: np.ndarray) -> "NormParams":
        """Min-max parameters of one plane; a constant plane gets scale 1 (it maps to 0)."""
        lo, hi = float(plane.min()), float(plane.max())
        return cls(offset=lo, scale=hi - lo if hi > lo else 1.0)

    def normalize(self, values: np.ndarray) -> np.ndarray:
        """Stored values to float32 in [0, 1] (computed in float64, then cast)."""
        return ((np.asarray(values, np.float64) - self.offset) / self.scale).astype(np.float32)

    def denormalize(self, x: np.ndarray, dtype=None) -> np.ndarray:
        """[0, 1] back to stored values: float64, or rounded and clipped to an integer ``dtype``.

        float32 keeps 24 bits of mantissa, so for 16-bit planes the float64
        result is within 2^-8 of the stored integer and rounding recovers it.
        """
        values = np.asarray(x, np.float64) * self.scale + self.offset
        if dtype is None:
            return values
        dtype = np.dtype(dtype)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            values = np.clip(np.rint(values), info.min, info.max)
        return values.astype(dtype)


def _pad_reflect(plane: np.ndarray, min_size: int) -> np.ndarray:
    """Pad at the bottom and right by reflection (edge not repeated) up to ``min_size``.

    Padding on one side only keeps pixel (0, 0) of the plane at (0, 0), and a
    reflection has no seam for the codec to learn; numpy reflects repeatedly
    when the padding is larger than the plane.
    """
    pad_rows = max(0, min_size - plane.shape[0])
    pad_cols = max(0, min_size - plane.shape[1])
    if pad_rows == 0 and pad_cols == 0:
        return plane
    return np.pad(plane, ((0, pad_rows), (0, pad_cols)), mode="reflect")


def planes_from_image(image: Image, *, min_size: int = 0) -> list[tuple[np.ndarray, NormParams]]:
    """One (float32 plane in [0, 1], NormParams) per frame and sample, frame-major.

    Planes with fewer than ``min_size`` rows or columns are padded by reflection
    at the bottom and right (see :func:`_pad_reflect`); normalization uses the
    plane's own min and max, before padding.
    """
    out = []
    for frame in range(image.frames):
        for sample in range(image.samples):
            stored = image.pixels[frame, :, :, sample]
            params = NormParams.from_plane(stored)
            out.append((_pad_reflect(params.normalize(stored), min_size), params))
    return out


class _PlaneBank:
    """All planes in one flat float32 tensor, with per-plane offset, rows, cols and sampling weight."""

    def __init__(self, planes: Sequence[np.ndarray], areas: Sequence[int]):
        sizes = [p.size for p in planes]
        self.flat = tf.constant(np.concatenate([p.ravel() for p in planes]).astype(np.float32))
        self.offsets = tf.constant(np.cumsum([0] + sizes[:-1]), tf.int64)
        self.rows = tf.constant([p.shape[0] for p in planes], tf.int64)
        self.cols = tf.constant([p.shape[1] for p in planes], tf.int64)
        cdf = np.cumsum(np.asarray(areas, np.float64))
        self.cdf = tf.constant(cdf / cdf[-1], tf.float32)
        self.total_area = int(sum(areas))

    def pick(self, u: tf.Tensor) -> tf.Tensor:
        """Plane index for a uniform draw u in [0, 1): probability proportional to area."""
        index = tf.searchsorted(self.cdf, tf.reshape(u, [1]), side="right")[0]
        return tf.minimum(tf.cast(index, tf.int64), tf.size(self.cdf, tf.int64) - 1)

    def region(self, index, u_row, u_col, side) -> tf.Tensor:
        """A square window of plane ``index`` at a uniform position; ``side`` is clamped to the plane."""
        rows, cols = self.rows[index], self.cols[index]
        side = tf.minimum(tf.cast(side, tf.int64), tf.minimum(rows, cols))
        top = tf.cast(tf.floor(u_row * tf.cast(rows - side + 1, tf.float32)), tf.int64)
        left = tf.cast(tf.floor(u_col * tf.cast(cols - side + 1, tf.float32)), tf.int64)
        top, left = tf.minimum(top, rows - side), tf.minimum(left, cols - side)
        plane = tf.reshape(tf.slice(self.flat, [self.offsets[index]], [rows * cols]), [rows, cols])
        return tf.slice(plane, [top, left], [side, side])


def _resample(region: tf.Tensor, size: int, scale: tf.Tensor, angle: tf.Tensor) -> tf.Tensor:
    """Rotate ``region`` by ``angle`` (radians) about its centre, zoom by ``scale``, keep the central size×size.

    One bilinear resampling; pixels that fall outside the region (only when
    the plane was too small for a margin) are filled by reflection.
    """
    shape = tf.cast(tf.shape(region), tf.float32)
    cy_in, cx_in = (shape[0] - 1.0) / 2.0, (shape[1] - 1.0) / 2.0
    c_out = (size - 1) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # Output pixel (x, y) reads input R(angle)/scale · ((x, y) - c_out) + c_in.
    transform = tf.stack([
        cos, -sin, cx_in - cos * c_out + sin * c_out,
        sin, cos, cy_in - sin * c_out - cos * c_out,
        0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=region[tf.newaxis, :, :, tf.newaxis],
        transforms=transform[tf.newaxis],
        output_shape=tf.constant([size, size], tf.int32),
        fill_value=tf.constant(0.0),
        interpolation="BILINEAR",
        fill_mode="REFLECT")
    return out[0, :, :, 0]


def make_dataset(
    images: Optional[Iterable[Image]] = None,
    *,
    split: str = "train",
    patch_size: int = 128,
    batch_size: int = 8,
    seed: int = 0,
    augment: bool = True,
    rotate: bool = True,
    max_angle: float = 0.0,
    scale: Optional[tuple[float, float]] = (0.8, 1.25),
    mirror: bool = True,
    shuffle_buffer: int = 0,
    repeat: bool = True,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    input_context: Optional[tf.distribute.InputContext] = None,
) -> tf.data.Dataset:
    """Batches of random patches, float32 (batch_size, patch_size, patch_size, 1) in [0, 1].

    ``images`` defaults to ``split`` of the corpus; ``split="test"`` is refused
    because training never sees the test split. Each patch comes from a plane
    drawn with probability proportional to its area (so one large CR image
    weighs as much as many small MR slices together). With ``augment``:
    ``rotate`` turns by a random multiple of 90° and ``max_angle`` > 0 (degrees)
    adds a uniform small-angle rotation; ``scale`` (low, high) zooms by a
    log-uniform factor, resampling a crop of side patch_size/factor; ``mirror``
    flips horizontally and vertically, each with probability 1/2.

    Patch i depends only on (seed, i): batches are identical across runs and
    across ``num_parallel_calls``. Patches are already independent draws, so
    ``shuffle_buffer`` (> 0 adds a seeded shuffle) is rarely useful. With
    ``repeat=False`` the dataset is one "epoch" of ceil(total area / patch area)
    patches rounded up to whole batches; every batch is full.

    Under a tf.distribute strategy (``input_context`` from
    ``distribute_datasets_from_function``), ``batch_size`` is the global batch:
    each input pipeline batches its replicas' share, and pipeline k > 0 draws
    its patches with seed ``seed + k·2^32`` (pipeline 0 keeps ``seed``, so a
    single-worker run draws the same patches as without a strategy).
    """
    if split == "test":
        raise ValueError("make_dataset: split='test' is refused; training never touches the test "
                         "split (use eval_planes('test') for evaluation)")
    if patch_size < 1 or batch_size < 1:
        raise ValueError(f"make_dataset: patch_size and batch_size must be positive, "
                         f"got {patch_size} and {batch_size}")
    if scale is not None and not 0 < scale[0] <= scale[1]:
        raise ValueError(f"make_dataset: scale must be (low, high) with 0 < low <= high, got {scale}")
    if max_angle < 0:
        raise ValueError(f"make_dataset: max_angle must be >= 0 degrees, got {max_angle}")
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
        seed = int(seed) + (int(input_context.input_pipeline_id) << 32)
    if images is None:
        from data.corpus import corpus, load

        images = [load(item) for item in corpus(split=split)]
    images = list(images)
    planes, areas = [], []
    for image in images:
        areas += [image.rows * image.cols] * (image.frames * image.samples)
        planes += [plane for plane, _ in planes_from_image(image, min_size=patch_size)]
    if not planes:
        raise ValueError("make_dataset: no images to draw patches from")

    bank = _PlaneBank(planes, areas)
    size = patch_size
    use_rot90 = augment and rotate
    angle_max = math.radians(max_angle) if augment and rotate else 0.0
    log_lo, log_hi = (math.log(scale[0]), math.log(scale[1])) if augment and scale else (0.0, 0.0)
    use_scale = log_hi > log_lo
    use_mirror = augment and mirror
    seed_value = tf.constant(seed, tf.int64)

    def patch(index):
        u = tf.random.stateless_uniform([8], seed=tf.stack([seed_value, index]))
        plane = bank.pick(u[0])
        zoom = tf.exp(log_lo + (log_hi - log_lo) * u[3]) if use_scale else tf.constant(1.0)
        if angle_max > 0:
            angle = angle_max * (2.0 * u[4] - 1.0)
            # Side of the window that holds the rotated, zoomed patch, plus a margin for bilinear.
            extent = size / zoom * (tf.abs(tf.cos(angle)) + tf.abs(tf.sin(angle)))
            side = tf.cast(tf.math.ceil(extent), tf.int64) + 2
            region = bank.region(plane, u[1], u[2], side)
            out = _resample(region, size, zoom, angle)
        elif use_scale:
            side = tf.cast(tf.round(size / zoom), tf.int64)
            region = bank.region(plane, u[1], u[2], side)
            out = tf.image.resize(region[:, :, tf.newaxis], [size, size], method="bilinear")[:, :, 0]
        else:
            out = bank.region(plane, u[1], u[2], size)
        if use_rot90:
            out = tf.image.rot90(out[:, :, tf.newaxis], tf.cast(u[5] * 4.0, tf.int32) % 4)[:, :, 0]
        if use_mirror:
            out = tf.cond(u[6] < 0.5, lambda: tf.reverse(out, [1]), lambda: out)
            out = tf.cond(u[7] < 0.5, lambda: tf.reverse(out, [0]), lambda: out)
        out = tf.clip_by_value(out, 0.0, 1.0)
        return tf.reshape(out, [size, size, 1])

    if repeat:
        indices = tf.data.Dataset.counter(dtype=tf.int64)
    else:
        count = math.ceil(bank.total_area / (size * size) / batch_size) * batch_size
        indices = tf.data.Dataset.range(count)
    dataset = indices.map(patch, num_parallel_calls=num_parallel_calls, deterministic=True)
    if shuffle_buffer > 0:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
    dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options)


def eval_planes(split: str = "test") -> list[tuple[str, np.ndarray, NormParams]]:
    """(name, float32 plane in [0, 1], NormParams) for every plane of a corpus split, unpadded.

    Names are the item's name, with ``[frame f, sample s]`` appended when the
    image has more than one plane.
    """
    from data.corpus import corpus, load

    out = []
    for item in corpus(split=split):
        image = load(item)
        base = getattr(item, "name", None) or (Path(image.source).name if image.source else "image")
        several = image.frames * image.samples > 1
        for k, (plane, params) in enumerate(planes_from_image(image)):
            frame, sample = divmod(k, image.samples)
            name = f"{base}[frame {frame}, sample {sample}]" if several else str(base)
            out.append((name, plane, params))
    return out
