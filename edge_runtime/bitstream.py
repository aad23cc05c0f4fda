"""The keras_codec bitstream container (.kcd), format versions 1 and 2.

One image per stream: a header, the tile streams, an optional metadata block
and a CRC32. Version 1 codes every frame on its own; version 2 (frame groups,
below) adds two header fields and may code a frame from the previous one. All integers are little-endian and fixed width. ``P`` is the
length of the photometric string, ``N = frames * samples`` the number of
planes, ``T`` the number of tiles, ``L[i]`` the length of tile stream ``i``
and ``M`` the length of the compressed metadata.

====================  ======  ========  =============================================
offset                size    type      meaning
====================  ======  ========  =============================================
0                     4       bytes     magic ``b"KCD1"``
4                     2       uint16    format version (1 or 2)
6                     2       uint16    flags: bit 0 lossless, bit 1 has metadata,
                                        bit 2 error-bounded, bit 3 colour transform,
                                        bit 4 series (version 2 only), bit 5 padding
                                        map; other bits 0
8                     32      bytes     model id (SHA-256 of the model bundle)
40                    4       uint32    rows (>= 1)
44                    4       uint32    cols (>= 1)
48                    4       uint32    frames (>= 1)
52                    2       uint16    samples per pixel (1 or 3)
54                    1       uint8     bits stored (1..8 or 1..16, by dtype)
55                    1       uint8     signed (0 or 1, agrees with dtype)
56                    1       uint8     dtype code: 0 uint8, 1 uint16, 2 int8, 3 int16
57                    1       uint8     P, photometric length (1..32)
58                    P       ASCII     photometric interpretation (printable ASCII)
58+P                  1       uint8     quality
59+P                  4       int32     max error (-1: not error-bounded; 0 if lossless)
63+P                  1       uint8     wavelet levels
64+P                  4       uint32    tile rows (>= 1)
68+P                  4       uint32    tile cols (>= 1)
(only with flag bit 3; C = 1 + frames, else C = 0)
  72+P                1       uint8     colour transform: 1 RCT, 2 green difference
  73+P                frames  uint8     per frame: 0 colour (3 planes), 1 grey (1 plane)
(only in version 2; V = 4 + frames, else V = 0)
  72+P+C              4       uint32    G, frames per group (1..frames)
  76+P+C              frames  uint8     per frame: 0 intra, k >= 1 predicted from the
                                        previous decoded frame with weight
                                        PREDICTION_WEIGHTS[k - 1]; 0 at every
                                        frame f with f % G == 0
72+P+C+V              8*N     int32 x2  per plane: lo, hi (min and max stored values)
72+P+C+V+8N           4       uint32    T, number of tiles (must equal N * tiles
                                        per plane from :func:`tile_grid`)
76+P+C+V+8N           4*T     uint32    L[0..T-1], tile stream lengths
76+P+C+V+8N+4T        sum(L)  bytes     tile streams, concatenated
(only with flag bit 5)
  next                4       int32     Pixel Padding Value (stored units)
  next                4       int32     Pixel Padding Range Limit (the value
                                        again without one)
  next                4       uint32    K, padding map length
  next                K       bytes     padding map (zlib; layout in
                                        edge_runtime.padding)
(only with flag bit 1)
  next                4       uint32    M, compressed metadata length
  next                M       bytes     zlib-compressed metadata (DICOM header
                                        without pixel data)
end-4                 4       uint32    CRC32 (zlib) of every byte before it
====================  ======  ========  =============================================

Planes are ordered frame-major (plane ``f * samples + s``); tile ``i`` is tile
``i % tiles_per_plane`` (row-major, see :func:`tile_grid`) of plane
``i // tiles_per_plane``. The error-bounded flag is set exactly when
``max_error >= 0``.

PALETTE COLOR (photometric ``PALETTE COLOR``, 1 sample): the plane is the
image's stored indices, coded losslessly (they are labels, not intensities);
the stream must be lossless and unsigned, and the lookup tables are in the
DICOM header of its metadata block (without it, the indices decode but no
colours: runtime.decode_file refuses to write an image). Decoders before
this one refuse it (their photometric check).

Colour transform (flag bit 3; RGB only: 3 samples, photometric ``RGB``,
unsigned): the planes coded are not R, G, B but those of
:mod:`edge_runtime.colour`, frame by frame. A grey frame (R = G = B) is one
plane, its G. A colour frame is three: with transform 1 (RCT, lossy and
lossless streams) Y = floor((R + 2G + B) / 4), Cb = B - G, Cr = R - G; with
transform 2 (green difference, error-bounded streams with max error > 0) G,
then B - G' and R - G' where G' is G as decoded. ``N`` is then the sum over
frames of 1 (grey) or 3 (colour). The first plane of a frame (Y or G) has
lo, hi in the dtype's range like any plane; the other two are differences
and have lo, hi within +-4 * 2**(dtype bits). In a lossy stream (lo, hi) of
a plane is the affine map of its normalized [0, 1] samples, not necessarily
their min and max: a chroma plane's hi is lo + max(its range, 2 x the luma
plane's range), so chroma is quantized with twice luma's step in stored units.

Frame groups (version 2, written by codec.encode_image for multi-frame images
unless ``inter=False``): frames ``[kG, (k+1)G)`` form group ``k``. The first
frame of a group is intra, coded exactly as in version 1. A predicted frame
(mode k >= 1, weight a = num / den from ``PREDICTION_WEIGHTS[k - 1]``) codes,
for each of its planes x (the planes of version 1 for that frame and its
kind), the difference x - p with p = floor((num * x' + den // 2) / den), x'
the same plane of the previous frame *as decoded*, taken from its decoded
samples: for a frame without colour transform sample s; with the RCT
rct_forward of the decoded RGB frame (a grey frame: its G); with the green
difference G', then B' - G' and R' - G' (so the current frame's B - G'
plane, G' its own decoded green, is predicted by the previous frame's
B' - G'). The decoder clips the decoded difference to the plane's (lo, hi),
adds p back, and clips planes that hold samples (all planes without colour
transform, plane 0 with one) to the stored range. The (lo, hi) of a
predicted plane are the min and max of the difference (within +-4 * 2**(dtype
bits)); in a lossy stream its samples are normalized as (d - lo) / S, with S
the span hi - lo of the same plane of the group's first frame (with a colour
transform: of its plane 0, times 2 for chroma planes), so a difference is
quantized with the step of its frame's intra planes (and decoded like them,
post-filter included: on the cine that saves about 2 % of the bits of
predicted frames for 0.03 dB).
Predicted planes with a max error D are coded within D of the difference, so
every sample stays within D (D = 0: exact). Tiles and planes keep version 1's
frame-major order, so the tiles of group k are contiguous: a group decodes
from its own tiles and the header alone (random access), sequentially
within the group.

Padding map (flag bit 5, either version, one sample per pixel only): the pixels
equal to Pixel Padding Value, or within it and Pixel Padding Range Limit, with
their values, which the decoder puts back after decoding (edge_runtime.padding;
decoders before this one refuse the flag).

Series (flag bit 4, version 2 only): the frames are the slices of a series of
single-slice files; the metadata block holds their DICOM headers, packed as
edge_runtime.series defines. This module carries the flag and the bytes.

:func:`parse` trusts nothing: it checks the CRC before reading any length,
every length against the bytes that remain before slicing, and the geometry
before allocating anything that depends on it. Every problem raises
:class:`InvalidBitstreamError`.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from data.writers import atomic_write

__all__ = [
    "COLOUR_GREEN_DIFFERENCE",
    "COLOUR_NONE",
    "COLOUR_RCT",
    "FORMAT_VERSION",
    "FRAME_COLOUR",
    "FRAME_GREY",
    "FRAME_INTRA",
    "GROUPS_VERSION",
    "MAGIC",
    "MAX_METADATA_BYTES",
    "PREDICTION_WEIGHTS",
    "Header",
    "InvalidBitstreamError",
    "atomic_write_bytes",
    "pack",
    "parse",
    "plane_ranges",
    "read_header",
    "stream_model_id",
    "tile_grid",
]

MAGIC = b"KCD1"
FORMAT_VERSION = 1
"""The version of streams without frame groups (single frames, or inter=False)."""
GROUPS_VERSION = 2
"""The version of streams with frame groups or the series flag."""
SUPPORTED_VERSIONS = (1, 2)
MAX_PIXELS = 2 ** 31
MAX_TILE_SIDE = 4096
"""Largest tile side coded (the encoder writes 2048), so a small stream cannot make one tile allocate gigabytes."""
MAX_METADATA_BYTES = 8 * 2 ** 20
"""Largest decompressed metadata block accepted, so a zlib bomb cannot exhaust memory."""

FLAG_LOSSLESS = 1 << 0
FLAG_METADATA = 1 << 1
FLAG_ERROR_BOUNDED = 1 << 2
FLAG_COLOUR = 1 << 3
FLAG_SERIES = 1 << 4
FLAG_PADDING = 1 << 5
_KNOWN_FLAGS = FLAG_LOSSLESS | FLAG_METADATA | FLAG_ERROR_BOUNDED | FLAG_COLOUR | FLAG_PADDING
_KNOWN_FLAGS_V2 = _KNOWN_FLAGS | FLAG_SERIES

COLOUR_NONE = 0
COLOUR_RCT = 1
"""JPEG 2000's reversible colour transform: planes Y, Cb = B - G, Cr = R - G."""
COLOUR_GREEN_DIFFERENCE = 2
"""Error-bounded colour: planes G, B - G', R - G' (G' the decoded G)."""
COLOUR_TRANSFORMS = (COLOUR_RCT, COLOUR_GREEN_DIFFERENCE)
FRAME_COLOUR = 0
FRAME_GREY = 1
FRAME_KINDS = (FRAME_COLOUR, FRAME_GREY)
PALETTE = "PALETTE COLOR"

FRAME_INTRA = 0
PREDICTION_WEIGHTS = ((1, 1),)
"""Weights a = num / den of a predicted frame's prediction, indexed by its mode - 1. Only a = 1 so far:
weights 3/4 and 1/2 measured worse than both a = 1 and intra coding, on the cine and on thick MR slices."""

DTYPES = ("uint8", "uint16", "int8", "int16")
_DTYPE_RANGE = {"uint8": (0, 255), "uint16": (0, 65535), "int8": (-128, 127), "int16": (-32768, 32767)}
_DTYPE_BITS = {"uint8": 8, "uint16": 16, "int8": 8, "int16": 16}
_MAX_PHOTOMETRIC = 32
_MODEL_ID_BYTES = 32

_PRELUDE = struct.Struct("<4sHH32sIIIHBBBB")  # magic .. photometric length
_CODING = struct.Struct("<BiBII")
_U32 = struct.Struct("<I")
_PADDING = struct.Struct("<iiI")  # padding value, range limit, payload length
_U8 = struct.Struct("<B")
_MIN_LENGTH = _PRELUDE.size + 1 + _CODING.size + 8 + 4 + 4 + 4
"""One-letter photometric, one plane, one empty tile, no metadata, CRC."""


class InvalidBitstreamError(ValueError):
    """A byte string that is not a valid keras_codec stream.

    The message names the file (when known), what was expected and what was found.
    """

    def __init__(self, source, problem: str):
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(problem if self.source is None else f"{self.source}: {problem}")

    def __reduce__(self):  # picklable, so a worker process can report it
        return type(self), (self.source, self.problem)


@dataclass
class Header:
    """Everything a decoder needs besides the tile streams (see the module docstring)."""

    model_id: bytes
    rows: int
    cols: int
    frames: int
    samples: int
    bits_stored: int
    signed: bool
    dtype: str
    photometric: str
    quality: int
    max_error: int
    lossless: bool
    levels: int
    tile_rows: int
    tile_cols: int
    norm: list = field(default_factory=list)
    colour: int = COLOUR_NONE
    """Colour transform (flag bit 3): COLOUR_NONE, COLOUR_RCT or COLOUR_GREEN_DIFFERENCE."""
    frame_kinds: list = field(default_factory=list)
    """With a colour transform: FRAME_COLOUR or FRAME_GREY per frame."""
    group: int = 0
    """Frames per group (version 2); 0: a version 1 stream, every frame on its own."""
    frame_modes: list = field(default_factory=list)
    """Version 2: per frame FRAME_INTRA (0) or k >= 1, predicted with weight PREDICTION_WEIGHTS[k - 1]."""
    series: bool = False
    """Flag bit 4 (version 2): the frames are the slices of a series, the metadata their DICOM headers."""
    padding: Optional[tuple] = None
    """Flag bit 5: (Pixel Padding Value, Range Limit or the value again) in stored units, or None."""
    padding_map: bytes = b""
    """Flag bit 5: the padding map's payload (edge_runtime.padding), still compressed."""

    @property
    def version(self) -> int:
        return GROUPS_VERSION if self.group or self.series else FORMAT_VERSION

    def groups(self) -> list:
        """First frame index of each group ([0, 1, ..., frames - 1] in a version 1 stream)."""
        return list(range(0, self.frames, self.group or 1))

    @property
    def planes(self) -> int:
        """Number of coded planes: ``frames * samples``, or with a colour transform 1 per grey and 3 per colour frame."""
        if self.colour != COLOUR_NONE:
            return sum(1 if k == FRAME_GREY else 3 for k in self.frame_kinds)
        return self.frames * self.samples

    def frame_planes(self) -> list:
        """Planes of each frame, in stream order."""
        if self.colour != COLOUR_NONE:
            return [1 if k == FRAME_GREY else 3 for k in self.frame_kinds]
        return [self.samples] * self.frames

    @property
    def error_bounded(self) -> bool:
        return self.max_error >= 0

    @property
    def n_tiles(self) -> int:
        """Tiles in the stream: planes times tiles per plane."""
        return self.planes * _tiles_per_plane(self.rows, self.cols, self.tile_rows, self.tile_cols)


def tile_grid(rows: int, cols: int, tile_rows: int, tile_cols: int) -> list:
    """Tiles of one plane as half-open ``(r0, r1, c0, c1)``, row-major.

    The last row and column of tiles are smaller when the size does not divide the image.
    """
    for name, value in (("rows", rows), ("cols", cols), ("tile_rows", tile_rows), ("tile_cols", tile_cols)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"tile_grid: {name} must be a positive integer, got {value!r}")
    return [(r0, min(r0 + tile_rows, rows), c0, min(c0 + tile_cols, cols))
            for r0 in range(0, rows, tile_rows) for c0 in range(0, cols, tile_cols)]


def pack(header: Header, tiles: list, metadata: Optional[bytes] = None) -> bytes:
    """Serialize ``header``, the tile streams and optional metadata (compressed here) into one stream."""
    problem = _header_problem(header)
    if problem is not None:
        raise ValueError(f"cannot pack this header: {problem}")
    tiles = list(tiles)
    if len(tiles) != header.n_tiles:
        raise ValueError(f"cannot pack: the header's geometry and tile size give {header.n_tiles} tiles, "
                         f"got {len(tiles)} tile streams")
    for i, tile in enumerate(tiles):
        if not isinstance(tile, (bytes, bytearray, memoryview)):
            raise ValueError(f"cannot pack: tile {i} is {type(tile).__name__}, expected bytes")
        if len(tile) >= 2 ** 32:
            raise ValueError(f"cannot pack: tile {i} is {len(tile)} bytes, more than a uint32 length can hold")
    if metadata is not None and not isinstance(metadata, (bytes, bytearray, memoryview)):
        raise ValueError(f"cannot pack: metadata is {type(metadata).__name__}, expected bytes or None")

    flags = ((FLAG_LOSSLESS if header.lossless else 0) | (FLAG_METADATA if metadata is not None else 0)
             | (FLAG_ERROR_BOUNDED if header.error_bounded else 0)
             | (FLAG_COLOUR if header.colour != COLOUR_NONE else 0)
             | (FLAG_SERIES if header.series else 0) | (FLAG_PADDING if header.padding is not None else 0))
    photometric = header.photometric.encode("ascii")
    parts = [
        _PRELUDE.pack(MAGIC, header.version, flags, bytes(header.model_id), header.rows, header.cols,
                      header.frames, header.samples, header.bits_stored, int(header.signed),
                      DTYPES.index(header.dtype), len(photometric)),
        photometric,
        _CODING.pack(header.quality, header.max_error, header.levels, header.tile_rows, header.tile_cols),
        bytes([header.colour, *header.frame_kinds]) if header.colour != COLOUR_NONE else b"",
        _U32.pack(header.group) + bytes(header.frame_modes) if header.version == GROUPS_VERSION else b"",
        np.asarray(header.norm, dtype="<i4").tobytes(),
        _U32.pack(len(tiles)),
        np.asarray([len(t) for t in tiles], dtype="<u4").tobytes(),
        *(bytes(t) for t in tiles),
    ]
    if header.padding is not None:
        parts += [_PADDING.pack(*header.padding, len(header.padding_map)), bytes(header.padding_map)]
    if metadata is not None:
        compressed = zlib.compress(bytes(metadata), 9)
        parts += [_U32.pack(len(compressed)), compressed]
    body = b"".join(parts)
    return body + _U32.pack(zlib.crc32(body))


def parse(data: bytes, *, source=None, expected_model_ids: Optional[Iterable[bytes]] = None,
          max_pixels: int = MAX_PIXELS) -> tuple:
    """Check and split a stream into ``(header, tiles, metadata)``; metadata is None when absent.

    ``expected_model_ids`` (SHA-256 digests, bytes or hex) restricts the streams
    accepted to those made by a bundle this decoder holds.
    """
    view = _checked_view(data, source)
    reader = _Reader(view, len(view) - 4, source)
    header, flags = _read_header(reader, source, max_pixels)
    if expected_model_ids is not None:
        _check_model_id(header.model_id, expected_model_ids, source)

    n_tiles = reader.u32("the number of tiles")
    if n_tiles != header.n_tiles:
        raise InvalidBitstreamError(
            source, f"the geometry ({header.rows}x{header.cols}, {header.planes} plane(s), tiles of "
                    f"{header.tile_rows}x{header.tile_cols}) needs {header.n_tiles} tiles, the stream says {n_tiles}")
    lengths = np.frombuffer(reader.take(4 * n_tiles, f"{n_tiles} tile lengths"), dtype="<u4").astype(np.int64)
    total = int(lengths.sum())
    if total > reader.remaining:
        raise InvalidBitstreamError(
            source, f"the tile lengths add up to {total} bytes but only {reader.remaining} remain")
    tiles = []
    for length in lengths.tolist():
        tiles.append(bytes(reader.take(length, "a tile stream")))

    if flags & FLAG_PADDING:
        value, limit, size = _PADDING.unpack(bytes(reader.take(_PADDING.size, "the padding map's header")))
        lo, hi = _stored_range(header)
        if not (lo <= value <= hi and lo <= limit <= hi):
            raise InvalidBitstreamError(source, f"padding value {value} / limit {limit} outside the stored range "
                                                f"{lo}..{hi}")
        if header.samples != 1:
            raise InvalidBitstreamError(source, f"a padding map in a stream of {header.samples} samples per pixel; "
                                                f"padding is a single-sample attribute")
        header.padding = (value, limit)
        header.padding_map = bytes(reader.take(size, f"a padding map of {size} bytes"))
    metadata = None
    if flags & FLAG_METADATA:
        size = reader.u32("the metadata length")
        metadata = _decompress(reader.take(size, f"a metadata block of {size} bytes"), source)
    if reader.remaining:
        raise InvalidBitstreamError(
            source, f"{reader.remaining} unexpected byte(s) after the last block; expected the CRC next")
    return header, tiles, metadata


def read_header(data: bytes, *, source=None, max_pixels: int = MAX_PIXELS) -> Header:
    """The header alone, for ``edge-codec info``.

    Runs the same magic, version, CRC and geometry checks as :func:`parse`.
    """
    view = _checked_view(data, source)
    header, _ = _read_header(_Reader(view, len(view) - 4, source), source, max_pixels)
    return header


def atomic_write_bytes(path, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` through a fsynced temporary file in the same folder, then move it into place.

    An existing file raises FileExistsError unless ``overwrite``.
    """
    path = Path(path)
    atomic_write(path, bytes(data), overwrite)
    return path


class _Reader:
    """Sequential reads from ``view[:end]`` that refuse to run past ``end``."""

    def __init__(self, view: memoryview, end: int, source):
        self.view, self.pos, self.end, self.source = view, 0, end, source

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n > self.remaining:
            raise InvalidBitstreamError(
                self.source, f"{what} needs {n} bytes at offset {self.pos} but only {self.remaining} remain "
                             f"before the CRC")
        chunk = self.view[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: struct.Struct, what: str) -> tuple:
        return fmt.unpack(self.take(fmt.size, what))

    def u32(self, what: str) -> int:
        return self.unpack(_U32, what)[0]


def _checked_view(data, source) -> memoryview:
    """Minimum length, magic, version and CRC, in that order."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected the stream as bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    head = bytes(view[:4])
    if not MAGIC.startswith(head):
        raise InvalidBitstreamError(
            source, f"not a keras_codec stream: expected it to start with {MAGIC!r}, found {head!r}")
    if len(view) < _MIN_LENGTH:
        raise InvalidBitstreamError(
            source, f"truncated: {len(view)} bytes, shorter than the smallest keras_codec stream "
                    f"({_MIN_LENGTH} bytes)")
    version = int.from_bytes(view[4:6], "little")
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        raise InvalidBitstreamError(
            source, f"unsupported format version {version}; this decoder reads version {supported}; "
                    f"decode it with the keras_codec release that wrote it")
    stored = int.from_bytes(view[-4:], "little")
    computed = zlib.crc32(view[:-4])
    if stored != computed:
        raise InvalidBitstreamError(
            source, f"CRC mismatch (stored {stored:08x}, computed {computed:08x}): the stream is corrupt "
                    f"or truncated; copy it again from its source")
    return view


def _read_header(reader: _Reader, source, max_pixels: int) -> tuple:
    """Header fields up to and including the normalization table; geometry is checked before the table is read."""
    (_, version, flags, model_id, rows, cols, frames, samples, bits_stored, signed, dtype_code,
     n_phot) = reader.unpack(_PRELUDE, "the fixed header")
    known = _KNOWN_FLAGS_V2 if version == GROUPS_VERSION else _KNOWN_FLAGS
    if flags & ~known:
        raise InvalidBitstreamError(
            source, f"unknown flag bits {flags & ~known:#06x} set (version {version} "
                    f"defines bits 0-{known.bit_length() - 1} only)")
    if dtype_code >= len(DTYPES):
        raise InvalidBitstreamError(
            source, f"dtype code {dtype_code} is not one of 0-3 ({', '.join(DTYPES)})")
    if not 1 <= n_phot <= _MAX_PHOTOMETRIC:
        raise InvalidBitstreamError(
            source, f"photometric length {n_phot}, expected 1 to {_MAX_PHOTOMETRIC}")
    raw = bytes(reader.take(n_phot, "the photometric interpretation"))
    if not all(0x20 <= b < 0x7F for b in raw):
        raise InvalidBitstreamError(source, f"photometric interpretation {raw!r} is not printable ASCII")
    if signed > 1:
        raise InvalidBitstreamError(source, f"signed flag {signed}, expected 0 or 1")
    quality, max_error, levels, tile_rows, tile_cols = reader.unpack(_CODING, "the coding parameters")

    header = Header(model_id=model_id, rows=rows, cols=cols, frames=frames, samples=samples,
                    bits_stored=bits_stored, signed=bool(signed), dtype=DTYPES[dtype_code],
                    photometric=raw.decode("ascii"), quality=quality, max_error=max_error,
                    lossless=bool(flags & FLAG_LOSSLESS), levels=levels, tile_rows=tile_rows,
                    tile_cols=tile_cols)
    problem = _geometry_problem(header, max_pixels) or _coding_problem(header)
    if problem is None and bool(flags & FLAG_ERROR_BOUNDED) != header.error_bounded:
        problem = (f"the error-bounded flag is {'set' if flags & FLAG_ERROR_BOUNDED else 'clear'} "
                   f"but max_error is {max_error}")
    if problem is None and flags & FLAG_COLOUR:
        header.colour = reader.unpack(_U8, "the colour transform")[0]
        header.frame_kinds = list(bytes(reader.take(frames, f"the kinds of {frames} frame(s)")))
        problem = _colour_problem(header)
    if problem is None and version == GROUPS_VERSION:
        header.series = bool(flags & FLAG_SERIES)
        header.group = reader.u32("the group length")
        header.frame_modes = list(bytes(reader.take(frames, f"the modes of {frames} frame(s)")))
        problem = _groups_problem(header)
    if problem is not None:
        raise InvalidBitstreamError(source, problem)

    planes = header.planes
    norm = np.frombuffer(reader.take(8 * planes, f"normalization for {planes} plane(s)"),
                         dtype="<i4").reshape(planes, 2)
    header.norm = [(int(lo), int(hi)) for lo, hi in norm.tolist()]
    problem = _norm_problem(header)
    if problem is not None:
        raise InvalidBitstreamError(source, problem)
    return header, flags


def _header_problem(h: Header) -> Optional[str]:
    """What is wrong with a header about to be packed, or None."""
    if not isinstance(h.model_id, (bytes, bytearray)) or len(h.model_id) != _MODEL_ID_BYTES:
        return f"model_id must be {_MODEL_ID_BYTES} bytes (a SHA-256 digest), got {h.model_id!r:.80}"
    if h.dtype not in DTYPES:
        return f"dtype {h.dtype!r}, expected one of {', '.join(DTYPES)}"
    for name, bits in (("rows", 32), ("cols", 32), ("frames", 32), ("samples", 16), ("bits_stored", 8),
                       ("quality", 8), ("levels", 8), ("tile_rows", 32), ("tile_cols", 32)):
        value = getattr(h, name)
        if not isinstance(value, (int, np.integer)) or not 0 <= value < 2 ** bits:
            return f"{name} must be an integer in 0..{2 ** bits - 1}, got {value!r}"
    if not isinstance(h.max_error, (int, np.integer)) or not -1 <= h.max_error < 2 ** 31:
        return f"max_error must be -1 (not error-bounded) or a non-negative int32, got {h.max_error!r}"
    phot = h.photometric
    if (not isinstance(phot, str) or not 1 <= len(phot) <= _MAX_PHOTOMETRIC
            or not all(0x20 <= ord(c) < 0x7F for c in phot)):
        return f"photometric must be 1 to {_MAX_PHOTOMETRIC} printable ASCII characters, got {phot!r}"
    problem = (_geometry_problem(h, None) or _coding_problem(h) or _colour_problem(h)
               or (_groups_problem(h) if h.version == GROUPS_VERSION else None))
    if problem is not None:
        return problem
    if len(h.norm) != h.planes:
        return f"norm needs one (lo, hi) per plane: {h.planes} plane(s), got {len(h.norm)}"
    return _norm_problem(h)


def _geometry_problem(h: Header, max_pixels: Optional[int]) -> Optional[str]:
    if min(h.rows, h.cols, h.frames) < 1:
        return f"rows, cols and frames must be at least 1, found {h.rows}x{h.cols}, {h.frames} frame(s)"
    if h.samples not in (1, 3):
        return f"samples per pixel must be 1 or 3, found {h.samples}"
    if (h.samples == 1) != (h.photometric.startswith("MONOCHROME") or h.photometric == PALETTE):
        return (f"photometric {h.photometric!r} does not fit {h.samples} sample(s) per pixel "
                f"(1 sample: MONOCHROME1/2 or PALETTE COLOR; 3 samples: RGB or YBR)")
    total = h.rows * h.cols * h.frames * h.samples
    if max_pixels is not None and total > max_pixels:
        return (f"absurd geometry: {h.rows}x{h.cols}, {h.frames} frame(s), {h.samples} sample(s) is "
                f"{total} samples, more than max_pixels={max_pixels}; pass a larger max_pixels if it is real")
    if h.signed != h.dtype.startswith("int"):
        return f"signed is {bool(h.signed)} but dtype is {h.dtype}"
    if not 1 <= h.bits_stored <= _DTYPE_BITS[h.dtype]:
        return f"bits stored {h.bits_stored} does not fit dtype {h.dtype} (1 to {_DTYPE_BITS[h.dtype]})"
    if h.tile_rows < 1 or h.tile_cols < 1:
        return f"tile size must be at least 1x1, found {h.tile_rows}x{h.tile_cols}"
    if max(min(h.tile_rows, h.rows), min(h.tile_cols, h.cols)) > MAX_TILE_SIDE:
        return (f"tiles of {min(h.tile_rows, h.rows)}x{min(h.tile_cols, h.cols)} samples; this decoder codes "
                f"tiles of at most {MAX_TILE_SIDE}x{MAX_TILE_SIDE}")
    return None


def _coding_problem(h: Header) -> Optional[str]:
    if h.max_error < -1:
        return f"max_error {h.max_error}, expected -1 (not error-bounded) or >= 0"
    if h.lossless and h.max_error != 0:
        return f"a lossless stream must have max_error 0, found {h.max_error}"
    if h.photometric == PALETTE and (not h.lossless or h.signed):
        return "PALETTE COLOR indices are labels: their stream must be lossless and unsigned"
    return None


def _colour_problem(h: Header) -> Optional[str]:
    """What is wrong with a header's colour transform fields, or None."""
    if h.colour == COLOUR_NONE:
        return f"frame kinds {h.frame_kinds!r:.60} given without a colour transform" if h.frame_kinds else None
    if h.colour not in COLOUR_TRANSFORMS:
        return f"colour transform {h.colour!r}, expected 1 (RCT) or 2 (green difference)"
    if h.samples != 3 or h.photometric != "RGB" or h.signed:
        return (f"a colour transform needs unsigned RGB (3 samples), found {h.samples} sample(s), "
                f"{h.photometric!r}, {'signed' if h.signed else 'unsigned'}")
    if h.colour == COLOUR_RCT and h.error_bounded and h.max_error != 0:
        return f"the RCT codes lossy or lossless streams, this one has max error {h.max_error}"
    if h.colour == COLOUR_GREEN_DIFFERENCE and h.max_error < 1:
        return f"the green difference codes error-bounded streams with max error >= 1, found {h.max_error}"
    if len(h.frame_kinds) != h.frames or any(k not in FRAME_KINDS for k in h.frame_kinds):
        return (f"frame kinds must be {h.frames} values of 0 (colour) or 1 (grey), "
                f"found {list(h.frame_kinds)!r:.80}")
    return None


def _groups_problem(h: Header) -> Optional[str]:
    """What is wrong with a version 2 header's group fields, or None."""
    if not isinstance(h.group, (int, np.integer)) or not 1 <= h.group <= h.frames:
        return f"group length must be 1 to {h.frames} (the frames), found {h.group!r}"
    if len(h.frame_modes) != h.frames:
        return f"frame modes must be one per frame ({h.frames}), found {len(h.frame_modes)}"
    for f, mode in enumerate(h.frame_modes):
        if not isinstance(mode, (int, np.integer)) or not 0 <= mode <= len(PREDICTION_WEIGHTS):
            return f"frame {f} has mode {mode!r}, expected 0 (intra) to {len(PREDICTION_WEIGHTS)} (predicted)"
        if f % h.group == 0 and mode != FRAME_INTRA:
            return f"frame {f} starts a group of {h.group} frames but is predicted (mode {mode}); it must be intra"
    return None


def plane_ranges(h: Header) -> list:
    """The (min, max) allowed for each plane's lo and hi: the dtype's range, wider for differences
    (colour differences, and every plane of a predicted frame)."""
    full = _DTYPE_RANGE[h.dtype]
    limit = 4 * (full[1] + 1)
    wide = (-limit, limit)
    modes = h.frame_modes if h.version == GROUPS_VERSION else [FRAME_INTRA] * h.frames
    return [full if (i == 0 or h.colour == COLOUR_NONE) and mode == FRAME_INTRA else wide
            for n, mode in zip(h.frame_planes(), modes) for i in range(n)]


def _norm_problem(h: Header) -> Optional[str]:
    for plane, (pair, (lo_min, hi_max)) in enumerate(zip(h.norm, plane_ranges(h))):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            return f"norm of plane {plane} must be (lo, hi), got {pair!r}"
        lo, hi = pair
        if not isinstance(lo, (int, np.integer)) or not isinstance(hi, (int, np.integer)):
            return f"norm of plane {plane} must be integers, got {pair!r}"
        if not lo_min <= lo <= hi <= hi_max:
            return (f"normalization of plane {plane} is lo={lo}, hi={hi}; expected "
                    f"{lo_min} <= lo <= hi <= {hi_max} for {h.dtype}")
    return None


def _stored_range(header: Header) -> tuple:
    """The stored values a header's bits and sign allow."""
    bits = header.bits_stored
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if header.signed else (0, (1 << bits) - 1)


def stream_model_id(data) -> Optional[bytes]:
    """The model id in a stream's fixed header, read without checking the rest (parse checks it), or None when
    `data` does not start like a .kcd stream."""
    if len(data) < _PRELUDE.size or bytes(data[:len(MAGIC)]) != MAGIC:
        return None
    return bytes(data[8:8 + _MODEL_ID_BYTES])  # after the magic, the version and the flags (_PRELUDE)


def _check_model_id(model_id: bytes, expected: Iterable, source) -> None:
    held = [bytes.fromhex(m) if isinstance(m, str) else bytes(m) for m in expected]
    if model_id not in held:
        prefixes = ", ".join(m.hex()[:12] for m in held) or "no model"
        raise InvalidBitstreamError(
            source, f"made by model {model_id.hex()[:12]}, this decoder holds {prefixes}; "
                    f"use the bundle it was made with")


def _decompress(block: memoryview, source) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(block, MAX_METADATA_BYTES + 1)
    except zlib.error as exc:
        raise InvalidBitstreamError(source, f"the metadata block is not valid zlib data ({exc})") from None
    if len(out) > MAX_METADATA_BYTES:
        raise InvalidBitstreamError(
            source, f"the metadata block inflates to more than {MAX_METADATA_BYTES} bytes")
    if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise InvalidBitstreamError(
            source, "the metadata block is not exactly one complete zlib stream")
    return out


def _tiles_per_plane(rows: int, cols: int, tile_rows: int, tile_cols: int) -> int:
    if tile_rows < 1 or tile_cols < 1:
        return 0
    return -(-rows // tile_rows) * -(-cols // tile_cols)
