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

import tempfile
import zlib

import numpy as np

__all__ = ["MapWriter", "PaddingMap", "apply", "fill", "from_dataset", "mask_of", "pack", "unpack"]


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
    writer = MapWriter(padding)
    writer.add(pixels, mask)
    return writer.payload()


_CHUNK = 1 << 20
"""Bytes handed to zlib at a time when writing or reading a map."""


class MapWriter:
    """The map's payload built group by group (the same bytes as :func:`pack` of the whole image).

    Memory is bounded by a group: the mask bits go to the compressor as they come (with fewer than
    8 bits carried to the next group), and the values, which follow every mask bit in the payload,
    wait in a temporary file; without a range limit they are all zero and only counted.
    """

    def __init__(self, padding):
        self.padding = (int(padding[0]), int(padding[1]))  # (value, range limit), as the header carries it
        self.lo, self.hi = min(self.padding), max(self.padding)
        self._deflate = zlib.compressobj(9)
        self._out = []
        self._carry = np.zeros(0, bool)
        self._count = 0
        self._values = tempfile.TemporaryFile() if self.hi > self.lo else None

    def add(self, pixels: np.ndarray, mask: np.ndarray) -> None:
        """The next frames' stored values (frames, rows, cols, 1) and their padding pixels (frames, rows, cols)."""
        bits = np.concatenate([self._carry, mask.ravel()])
        whole = len(bits) // 8 * 8
        self._out.append(self._deflate.compress(np.packbits(bits[:whole]).tobytes()))
        self._carry = bits[whole:]
        n = int(np.count_nonzero(mask))
        self._count += n
        if self._values is not None and n:
            self._values.write((pixels[..., 0][mask].astype(np.int64) - self.lo).astype("<u4").tobytes())

    def payload(self) -> bytes | None:
        """The finished payload, or None when no pixel was padding (then the stream carries no map)."""
        if not self._count:
            return None
        out, deflate = self._out, self._deflate
        if len(self._carry):
            out.append(deflate.compress(np.packbits(self._carry).tobytes()))
        left = 4 * self._count
        if self._values is not None:
            self._values.seek(0)
        while left:
            n = min(left, _CHUNK)
            out.append(deflate.compress(self._values.read(n) if self._values is not None else bytes(n)))
            left -= n
        out.append(deflate.flush())
        if self._values is not None:
            self._values.close()
        return b"".join(out)


class _Inflater:
    """Reads a zlib payload's bytes in order, a bounded amount at a time."""

    def __init__(self, payload: bytes):
        self._payload = memoryview(payload)
        self._pos = 0
        self._z = zlib.decompressobj()

    def read(self, n: int) -> bytes:
        """The next `n` bytes (fewer only at the end of the data); ValueError on invalid zlib data."""
        parts, have = [], 0
        try:
            while have < n:
                if self._z.unconsumed_tail:
                    chunk = self._z.decompress(self._z.unconsumed_tail, n - have)
                elif self._pos < len(self._payload) and not self._z.eof:
                    data = self._payload[self._pos:self._pos + _CHUNK]
                    self._pos += len(data)
                    chunk = self._z.decompress(data, n - have)
                else:
                    break
                parts.append(chunk)
                have += len(chunk)
        except zlib.error as exc:
            raise ValueError(f"the padding map is not valid zlib data ({exc})") from None
        return b"".join(parts)

    def at_end(self) -> bool:
        """Whether the data ended exactly here: end of the zlib stream, nothing after it."""
        return (self._z.eof and not self._z.unconsumed_tail and not self._z.unused_data
                and self._pos >= len(self._payload))


class _MaskBits:
    """The mask part of a map, frame after frame (fewer than 8 bits carried between reads)."""

    def __init__(self, payload: bytes, rows: int, cols: int):
        self.reader, self._carry = _Inflater(payload), np.zeros(0, bool)
        self.per = rows * cols
        self.batch = max(1, (8 * _CHUNK) // max(self.per, 1))  # frames read at a time when skipping or counting
        self.at = 0  # frames read so far

    def frames(self, n: int) -> np.ndarray:
        """The next `n` frames' mask bits, (n, rows * cols); ValueError when the map holds fewer."""
        need = n * self.per
        data = self.reader.read(-(-(need - len(self._carry)) // 8))
        bits = np.concatenate([self._carry, np.unpackbits(np.frombuffer(data, np.uint8)).astype(bool)])
        if len(bits) < need:
            raise ValueError("the padding map holds too few mask bytes for its frames")
        self._carry, self.at = bits[need:], self.at + n
        return bits[:need].reshape(n, self.per)

    def skip_to(self, f: int) -> None:
        while self.at < f:
            self.frames(min(self.batch, f - self.at))


class PaddingMap:
    """A stream's map, read frame range by frame range (in order, as groups decode: memory bounded by a
    group; going back re-reads from the start). `counts[f]` is frame f's number of padding pixels."""

    def __init__(self, payload: bytes, lo: int, hi: int, frames: int, rows: int, cols: int, counts: np.ndarray):
        self.lo, self.hi = lo, hi
        self.frames, self.rows, self.cols = frames, rows, cols
        self.counts = counts
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._payload = payload
        self._mask_reader = self._value_reader = None

    def frame_mask(self, first: int, n: int) -> np.ndarray:
        """Padding pixels of frames [first, first + n) as a (n, rows, cols) bool array."""
        if n <= 0:
            return np.zeros((0, self.rows, self.cols), bool)
        if self._mask_reader is None or self._mask_reader.at > first:
            self._mask_reader = _MaskBits(self._payload, self.rows, self.cols)
        self._mask_reader.skip_to(first)
        return self._mask_reader.frames(n).reshape(n, self.rows, self.cols)

    def frame_values(self, first: int, n: int) -> np.ndarray:
        """Original values (int64) of frames [first, first + n)'s padding pixels, in mask order."""
        start, stop = int(self.offsets[first]), int(self.offsets[first + n])
        mask_bytes = -(-self.frames * self.rows * self.cols // 8)
        if self._value_reader is None or self._value_reader[1] > start:
            reader = _Inflater(self._payload)
            left = mask_bytes
            while left:
                left -= len(reader.read(min(left, _CHUNK)))
            self._value_reader = [reader, 0]
        reader, at = self._value_reader
        while at < start:
            k = min(start - at, _CHUNK // 4)
            reader.read(4 * k)
            at += k
        data = reader.read(4 * (stop - start))
        self._value_reader[1] = stop
        return np.frombuffer(data, "<u4").astype(np.int64) + self.lo

    @property
    def mask(self) -> np.ndarray:
        """Every frame's mask at once (frames, rows, cols)."""
        return self.frame_mask(0, self.frames)

    @property
    def values(self) -> np.ndarray:
        """Every padding pixel's original value at once."""
        return self.frame_values(0, self.frames)


def unpack(payload: bytes, padding, frames: int, rows: int, cols: int) -> PaddingMap:
    """The map of a stream, checked whole in one pass of bounded memory (ValueError when the payload is not
    one for this geometry)."""
    lo, hi = min(padding), max(padding)
    bits, counts = _MaskBits(payload, rows, cols), []
    while bits.at < frames:
        counts.append(bits.frames(min(bits.batch, frames - bits.at)).sum(axis=1))
    reader = bits.reader  # the values follow the mask bits
    counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    left = int(counts.sum())
    while left:
        k = min(left, _CHUNK // 4)
        data = reader.read(4 * k)
        if len(data) != 4 * k:
            raise ValueError(f"the padding map does not hold exactly one value per padding pixel ({int(counts.sum())})")
        if int(np.frombuffer(data, "<u4").max()) > hi - lo:
            raise ValueError("the padding map holds a value outside the padding range")
        left -= k
    if reader.read(1) or not reader.at_end():
        raise ValueError(f"the padding map does not hold exactly one value per padding pixel ({int(counts.sum())})")
    return PaddingMap(payload, lo, hi, frames, rows, cols, counts.astype(np.int64))


def apply(frames: np.ndarray, first: int, padding: PaddingMap, clip: tuple, lossy: bool) -> np.ndarray:
    """Frames [first, first + len) as decoded, with their padding pixels put back (in place, returned)."""
    plane = frames[..., 0]
    mask = padding.frame_mask(first, len(frames))
    if lossy:  # image pixels decoded into the padding range go to its nearer side, within the stored range
        inside = (plane >= padding.lo) & (plane <= padding.hi) & ~mask
        if inside.any():
            v = plane[inside].astype(np.int64)
            below, above = padding.lo - 1, padding.hi + 1
            to_below = ((v - padding.lo) <= (padding.hi - v)) & (below >= clip[0]) | (above > clip[1])
            moved = np.where(to_below, below, above)
            ok = (moved >= clip[0]) & (moved <= clip[1])
            plane[inside] = np.where(ok, moved, v).astype(plane.dtype)
    plane[mask] = padding.frame_values(first, len(frames)).astype(plane.dtype)
    return frames
