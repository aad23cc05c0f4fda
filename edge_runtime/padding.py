"""Pixel Padding Value: padding pixels come back exactly, in every mode.

DICOM marks the pixels outside a CT's reconstruction circle (or any region that is not image) with
Pixel Padding Value (0028,0120), or with every stored value between it and Pixel Padding Range Limit
(0028,0121). Viewers and analysis tools test for those values exactly, so a lossy decode that turns
-2000 into -1987 turns padding into tissue. The stream therefore carries a map of the padding pixels
(container flag bit 5, edge_runtime.bitstream): the decoder puts their original values back after the
wavelet decode, and the encoder, free to code anything there, codes a smooth continuation of the image
instead of the step down to the padding value (fewer bits at the border of the field of view).

The map's payload is one zlib stream of ``packbits(mask)`` (frame-major, then row-major, big-endian
bit order as numpy's packbits) followed by, for each padding pixel in that order, its value minus
min(value, limit) as little-endian uint32 (all zero, so nearly free, without a range limit).

In lossy streams the decoder also moves any other pixel that decodes into the padding range just
outside it (to the nearer side), so a viewer never mistakes image for padding; error-bounded streams
are left as decoded there, because the side the original lies on is unknown and the bound comes first.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

__all__ = ["PaddingMap", "apply", "fill", "from_dataset", "mask_of", "pack", "unpack"]


def from_dataset(dataset, samples: int):
    """(value, limit) of a DICOM dataset's Pixel Padding Value / Range Limit, or None (absent, colour)."""
    if dataset is None or samples != 1 or "PixelPaddingValue" not in dataset:
        return None
    value = dataset.PixelPaddingValue
    limit = dataset.get("PixelPaddingRangeLimit", value)
    if isinstance(value, (bytes, bytearray)) or isinstance(limit, (bytes, bytearray)):
        return None  # an ambiguous VR the reader could not resolve: nothing to trust
    try:
        return int(value), int(limit)
    except (TypeError, ValueError):
        return None


def mask_of(pixels: np.ndarray, padding) -> np.ndarray:
    """Padding pixels of (frames, rows, cols, 1) stored values: those within [min, max] of (value, limit)."""
    lo, hi = min(padding), max(padding)
    plane = pixels[..., 0]
    return (plane >= lo) & (plane <= hi)


def fill(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A copy of `pixels` whose padding pixels continue the image smoothly (what the encoder codes there).

    Each row's padding runs are interpolated linearly between the image pixels around them (held flat
    past the row's ends); a row without image pixels takes the frame's mean image value.
    """
    out = pixels.copy()
    for f in range(pixels.shape[0]):
        plane, pad = out[f, :, :, 0], mask[f]
        if not pad.any():
            continue
        if pad.all():
            continue  # nothing but padding: whatever is coded, the map restores it
        mean = plane[~pad].mean()
        cols = np.arange(plane.shape[1])
        for r in np.flatnonzero(pad.any(axis=1)):
            keep = ~pad[r]
            if keep.any():
                plane[r, pad[r]] = np.round(np.interp(cols[pad[r]], cols[keep], plane[r, keep].astype(np.float64)))
            else:
                plane[r] = np.round(mean)
    return out


def pack(pixels: np.ndarray, mask: np.ndarray, padding) -> bytes:
    """The map's payload (module docstring) for padding pixels `mask` of `pixels`."""
    values = pixels[..., 0][mask].astype(np.int64) - min(padding)
    return zlib.compress(np.packbits(mask.ravel()).tobytes() + values.astype("<u4").tobytes(), 9)


@dataclass
class PaddingMap:
    """A decoded map: the padding range and, per frame, the mask and the original values."""

    lo: int
    hi: int
    mask: np.ndarray
    values: np.ndarray
    offsets: np.ndarray  # first value of each frame in `values`


def unpack(payload: bytes, padding, frames: int, rows: int, cols: int) -> PaddingMap:
    """The map of a stream (ValueError when the payload is not one for this geometry)."""
    n = frames * rows * cols
    nbytes = -(-n // 8)
    inflater = zlib.decompressobj()
    try:
        head = inflater.decompress(payload, nbytes)
    except zlib.error as exc:
        raise ValueError(f"the padding map is not valid zlib data ({exc})") from None
    if len(head) != nbytes:
        raise ValueError(f"the padding map holds {len(head)} mask bytes, the geometry needs {nbytes}")
    mask = np.unpackbits(np.frombuffer(head, np.uint8), count=n).astype(bool)
    count = int(mask.sum())
    try:
        rest = inflater.decompress(inflater.unconsumed_tail, 4 * count + 1)
    except zlib.error as exc:
        raise ValueError(f"the padding map is not valid zlib data ({exc})") from None
    if len(rest) != 4 * count or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise ValueError(f"the padding map does not hold exactly one value per padding pixel ({count})")
    lo, hi = min(padding), max(padding)
    values = np.frombuffer(rest, "<u4").astype(np.int64) + lo
    if count and int(values.max()) > hi:
        raise ValueError("the padding map holds a value outside the padding range")
    mask = mask.reshape(frames, rows, cols)
    offsets = np.concatenate([[0], np.cumsum(mask.reshape(frames, -1).sum(axis=1))])
    return PaddingMap(lo, hi, mask, values, offsets)


def apply(frames: np.ndarray, first: int, padding: PaddingMap, clip: tuple, lossy: bool) -> np.ndarray:
    """Frames [first, first + len) as decoded, with their padding pixels put back (in place, returned)."""
    plane = frames[..., 0]
    mask = padding.mask[first:first + len(frames)]
    if lossy:  # image pixels decoded into the padding range go to its nearer side, within the stored range
        inside = (plane >= padding.lo) & (plane <= padding.hi) & ~mask
        if inside.any():
            v = plane[inside].astype(np.int64)
            below, above = padding.lo - 1, padding.hi + 1
            to_below = ((v - padding.lo) <= (padding.hi - v)) & (below >= clip[0]) | (above > clip[1])
            moved = np.where(to_below, below, above)
            ok = (moved >= clip[0]) & (moved <= clip[1])
            plane[inside] = np.where(ok, moved, v).astype(plane.dtype)
    plane[mask] = padding.values[padding.offsets[first]:padding.offsets[first + len(frames)]].astype(plane.dtype)
    return frames
