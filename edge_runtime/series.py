"""A series of single-slice DICOM files <-> one multi-frame stream, TensorFlow-free.

    edge-codec encode --series DIR OUT.kcd    read_series, then runtime's encoder (frames = slices)
    edge-codec decode OUT.kcd OUTDIR/         decode_series: one DICOM file per original slice

Reading (:func:`read_series`). The files directly in DIR (not its subfolders; hidden files and
``DICOMDIR`` skipped) that have an image suffix (data.readers.IMAGE_SUFFIXES) or start like a DICOM
file whatever their name (``IM0001``, a SOP Instance UID) are the slices: each must be a
single-frame DICOM image; other files (notes, a ``.json``) are left alone. They must be one series
and one geometry: the same Series Instance UID, Rows, Columns, Samples per Pixel, Bits Allocated,
Bits Stored, Pixel Representation, Photometric Interpretation and Image Orientation (Patient)
(direction cosines within 1e-4). Anything else is refused with one :class:`~data.image.
InvalidImageError` naming the folder, the offending file, what differs and from which file,
before a pixel is decoded. Slices are ordered by Image Position (Patient) projected on the slice
normal (the cross product of the row and column direction cosines), ascending, when every slice
has a position and an orientation and no two project to the same place; else by Instance Number
when every slice has a distinct one; else by file name. The order used is recorded in the stream.

Metadata block of a series stream (container flag bit 4 "series"; the container compresses the
block with zlib as it does a single DICOM header). All integers little-endian:

====================  ======  ========  =============================================
offset                size    type      meaning
====================  ======  ========  =============================================
0                     4       bytes     magic ``b"KCSH"``
4                     2       uint16    layout version (1)
6                     1       uint8     ordering: 1 Image Position (Patient) along the
                                        normal, 2 Instance Number, 3 file name
7                     1       uint8     0 (reserved)
8                     4       uint32    N, slices (>= 1; equals the stream's frames)
12                    4       uint32    C, length of the common part
16                    C       bytes     common part: the DICOM elements every slice
                                        holds with identical bytes (C may be 0)
16+C                  4N      uint32    S[0..N-1], length of slice i's own part
16+C+4N               sum(S)  bytes     own parts, in frame order; each is
                                        uint16 K, K bytes UTF-8 original file name,
                                        then the slice's other elements
====================  ======  ========  =============================================

A slice's header (:func:`runtime.dicom_metadata`: no pixel data, no file meta) is its common
part and its own elements together; both parts are DICOM data sets in Explicit VR Little Endian
(an own part may be Implicit VR when a slice's header only encodes that way; then that slice
shares nothing and C is 0). Deduplicating costs nothing to decode and keeps the block small:
patient, study, equipment and acquisition elements are stored once; a slice keeps its own UIDs,
position, Instance Number, slice location, times, window and pixel range. :func:`pack_headers`
with ``dedup=False`` writes C = 0 and whole headers (what a reader must accept too).

Decoding (:func:`decode_series`) writes one uncompressed DICOM file per slice into OUTDIR (made if
absent) as each group of frames is decoded: its header is the slice's own (identity, Image Position
and Instance Number kept), with a new SOP Instance UID and, after a lossy code, the derivation and
lossy attributes data.writers adds to a single-file decode; a lossless stream says "00" unless the
source was lossy. Files are named after the original file: ``NAME.dcm`` for ``NAME.dcm`` (any
image suffix is replaced; ``IM0001`` gives ``IM0001.dcm``), or, when a stored name is unusable
(empty, hidden, a path, or two names equal ignoring case), ``slice_0001.dcm``, ``slice_0002.dcm``,
... in frame order for every slice. No file is written over an existing one without ``force``:
that is checked for every name before the first is written. Writes are atomic (data.writers).
"""
from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from data.image import Image, InvalidImageError
from data.readers import IMAGE_SUFFIXES, MAX_IMAGE_BYTES, read_image
from edge_runtime import padding
from edge_runtime.frames import LazyFrames

__all__ = ["MAGIC", "ORDERINGS", "LAYOUT_VERSION", "Series", "SeriesHeaders", "decode_series", "describe",
           "encode_series", "frame_groups", "is_series", "output_names", "pack_headers", "read_series",
           "series_files", "unpack_headers"]

MAGIC = b"KCSH"
LAYOUT_VERSION = 1
ORDER_POSITION, ORDER_INSTANCE, ORDER_NAME = 1, 2, 3
ORDERINGS = {ORDER_POSITION: "Image Position (Patient) along the slice normal",
             ORDER_INSTANCE: "Instance Number", ORDER_NAME: "file name"}
ORIENTATION_TOLERANCE = 1e-4
"""Largest difference between two slices' direction cosines still called the same orientation."""
POSITION_TOLERANCE = 1e-3
"""Two slices whose positions along the normal differ by less (mm) are at the same place."""

_FIXED = struct.Struct("<4sHBBII")
_SAME = (("SeriesInstanceUID", "Series Instance UID"), ("Rows", "Rows"), ("Columns", "Columns"),
         ("SamplesPerPixel", "Samples per Pixel"), ("BitsAllocated", "Bits Allocated"),
         ("BitsStored", "Bits Stored"), ("PixelRepresentation", "Pixel Representation"),
         ("PhotometricInterpretation", "Photometric Interpretation"))


@dataclass
class Series:
    """A series read from a folder: the volume (one frame per slice, in order), and per slice (same
    order) its header bytes (runtime.dicom_metadata) and original file name; ``ordering`` is one of
    ORDERINGS' keys."""

    image: Image
    headers: list
    names: list
    ordering: int
    folder: str
    padding: Optional[tuple] = None
    """(Pixel Padding Value, Range Limit) when every slice has the same (edge_runtime.padding), else None."""


# --------------------------------------------------------------------------- reading

def series_files(folder) -> list:
    """The candidate slice files directly in ``folder`` (sorted by name): image suffixes and extension-less
    files, hidden files and DICOMDIR skipped."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder; --series reads a folder of single-slice DICOM files")
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name.upper() == "DICOMDIR" or not entry.is_file():
            continue
        path = Path(entry.path)
        if path.suffix.lower() in IMAGE_SUFFIXES or _has_dicom_prefix(path):
            found.append(path)
    if not found:
        raise InvalidImageError(folder, "holds no DICOM files (subfolders are not read): nothing to encode, "
                                        "nothing written")
    return found


def _has_dicom_prefix(path: Path) -> bool:
    """Whether a file starts like a DICOM file (DICM at byte 128), whatever its name (UIDs, IM0001)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _header(path: Path, folder: Path):
    """A slice's data set without pixels, refused unless it is a single-frame DICOM image."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with open(path, "rb") as f:
                head = f.read(132)
            if head[128:132] != b"DICM" and head.startswith((b"\x89PNG", b"II*\x00", b"MM\x00*")):
                raise ValueError("it is a PNG or TIFF file")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=head[128:132] != b"DICM")
            list(ds)
        except Exception as e:
            raise InvalidImageError(folder, f"{path.name} is not a DICOM file ({' '.join(str(e).split())[:200]}); "
                                            f"a series folder holds single-slice DICOM files only") from None
    if "Rows" not in ds or "Columns" not in ds:
        raise InvalidImageError(folder, f"{path.name} is not a DICOM image (no Rows/Columns); a series folder "
                                        f"holds single-slice DICOM images only")
    frames = _number(ds, "NumberOfFrames", 1)
    if frames not in (None, 1):
        raise InvalidImageError(folder, f"{path.name} is a multi-frame object ({frames} frames), not a slice: "
                                        f"encode it on its own (edge-codec encode {path.name} OUT.kcd)")
    return ds


def _number(ds, keyword, default=None):
    try:
        value = ds.get(keyword, None)
        if value is None or value == "":
            return default
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0]
        return int(value)
    except (TypeError, ValueError):
        return None


def _vector(ds, keyword, size):
    try:
        value = ds.get(keyword, None)
        values = [float(v) for v in value] if value is not None else []
    except (TypeError, ValueError):
        return None
    return np.array(values) if len(values) == size else None


def _text(ds, keyword):
    value = ds.get(keyword, None)
    return None if value is None else str(value).strip()


def _check_same(folder: Path, paths: list, datasets: list) -> None:
    """One series, one geometry: every slice like the first (module docstring)."""
    first, ref = paths[0], datasets[0]
    seen_uid = {}
    for path, ds in zip(paths, datasets):
        for keyword, label in _SAME:
            a, b = _text(ref, keyword), _text(ds, keyword)
            if a != b:
                raise InvalidImageError(
                    folder, f"{path.name} differs from {first.name}: {label} {b if b is not None else '(none)'} "
                            f"against {a if a is not None else '(none)'}; a stream holds one series of one geometry: "
                            f"move the other files to a folder of their own")
        o1, o2 = _vector(ref, "ImageOrientationPatient", 6), _vector(ds, "ImageOrientationPatient", 6)
        if (o1 is None) != (o2 is None) or (o1 is not None and np.abs(o1 - o2).max() > ORIENTATION_TOLERANCE):
            show = lambda o: "(none)" if o is None else "\\".join(f"{v:g}" for v in o)
            raise InvalidImageError(
                folder, f"{path.name} differs from {first.name}: Image Orientation (Patient) {show(o2)} against "
                        f"{show(o1)}; a stream holds one series of one geometry: move the other files to a folder "
                        f"of their own")
        uid = _text(ds, "SOPInstanceUID")
        if uid and uid in seen_uid:
            raise InvalidImageError(folder, f"{path.name} has the SOP Instance UID of {seen_uid[uid].name}: the "
                                            f"same slice twice; remove one of them")
        seen_uid[uid] = path


def _order(datasets: list, paths: list) -> tuple[list, int]:
    """Indices of the slices in series order, and how they were ordered (module docstring)."""
    n = len(datasets)
    positions = [_vector(ds, "ImagePositionPatient", 3) for ds in datasets]
    orientation = _vector(datasets[0], "ImageOrientationPatient", 6)
    if orientation is not None and all(p is not None for p in positions):
        normal = np.cross(orientation[:3], orientation[3:])
        along = np.array([float(np.dot(p, normal)) for p in positions])
        order = sorted(range(n), key=lambda i: (along[i], paths[i].name))
        steps = np.diff(along[order])
        if np.linalg.norm(normal) > 0.5 and (n == 1 or steps.min() >= POSITION_TOLERANCE):
            return order, ORDER_POSITION
    numbers = [_number(ds, "InstanceNumber") for ds in datasets]
    if all(v is not None for v in numbers) and len(set(numbers)) == n:
        return sorted(range(n), key=lambda i: numbers[i]), ORDER_INSTANCE
    return list(range(n)), ORDER_NAME


class SliceStack(LazyFrames):
    """A series' volume (slices, rows, cols, samples), each slice read from its file when asked for.

    Each slice is checked against the first as it is read (a file changed since :func:`read_series`
    checked it is refused the same way), so an encoder taking a group of frames at a time holds a
    group, not the series.
    """

    def __init__(self, folder: Path, paths: list, template, max_bytes: int):
        self.folder, self.paths, self.max_bytes = folder, paths, max_bytes
        self._set_shape(len(paths), template.pixels)
        self._key = (template.bits_stored, template.signed, template.photometric)

    def read_slice(self, k: int) -> Image:
        """Slice k as read from its file (one frame), checked against the first slice."""
        path = self.paths[k]
        image = read_image(path, max_bytes=self.max_bytes)
        if image.frames != 1:
            raise InvalidImageError(self.folder, f"{path.name} holds {image.frames} frames, not one slice")
        if (image.pixels.shape[1:], image.pixels.dtype, image.bits_stored, image.signed, image.photometric) != (
                self.shape[1:], self.dtype) + self._key:
            raise InvalidImageError(self.folder, f"{path.name} decodes to other pixels than {self.paths[0].name} "
                                                 f"({image.pixels.shape[1:]} {image.pixels.dtype}, {image.photometric}, "
                                                 f"{image.bits_stored} bits, against {self.shape[1:]} {self.dtype}, "
                                                 f"{self._key[2]}, {self._key[0]} bits)")
        return image

    def frame(self, k: int) -> np.ndarray:
        """Slice k's stored values (rows, cols, samples)."""
        return self.read_slice(k).pixels[0]


def read_series(folder, *, max_bytes: int = MAX_IMAGE_BYTES) -> Series:
    """Read a folder of single-slice DICOM files of one series (module docstring) as one volume.

    Every header is read and checked before any pixel is decoded; then each slice is decoded once,
    checked against the first and its header kept, one slice in memory at a time. The volume is a
    :class:`SliceStack`: pixels are read again from the files as they are needed, so encoding a
    series holds a group of slices, not the series (refused from the header values when the whole
    volume would exceed ``max_bytes``, the limit of one image).
    """
    from edge_runtime.runtime import dicom_metadata

    folder = Path(folder)
    paths = series_files(folder)
    datasets = [_header(p, folder) for p in paths]
    _check_same(folder, paths, datasets)
    order, ordering = _order(datasets, paths)
    paths = [paths[i] for i in order]
    stack, headers, template = None, [], None
    for k, path in enumerate(paths):
        if stack is None:
            template = read_image(path, max_bytes=max_bytes)
            if template.frames != 1:
                raise InvalidImageError(folder, f"{path.name} holds {template.frames} frames, not one slice")
            nbytes = len(paths) * template.pixels.nbytes
            if nbytes > max_bytes:
                raise InvalidImageError(folder, f"{len(paths)} slices of {template.pixels.nbytes:,} bytes would take "
                                                f"{nbytes:,} bytes, over the limit of {max_bytes:,}")
            stack = SliceStack(folder, paths, template, max_bytes)
            dataset = template.dataset
        else:
            dataset = stack.read_slice(k).dataset
        headers.append(dicom_metadata(dataset))
    volume_image = Image(pixels=stack, bits_stored=template.bits_stored, signed=template.signed,
                         photometric=template.photometric, rescale_slope=template.rescale_slope,
                         rescale_intercept=template.rescale_intercept, modality=template.modality,
                         source=str(folder))
    paddings = {padding.from_dataset(ds, volume_image.samples) for ds in datasets}
    return Series(image=volume_image, headers=headers, names=[p.name for p in paths], ordering=ordering,
                  folder=str(folder), padding=paddings.pop() if len(paddings) == 1 else None)


# --------------------------------------------------------------------------- metadata layout

def _elements(header: bytes) -> Optional[list]:
    """(tag, bytes) of each top-level element of a header in Explicit VR Little Endian, cut from its own
    bytes (so text keeps its character set and the parts rebuild the header exactly); None when the
    header is not in that encoding."""
    from pydicom.filereader import data_element_generator

    fp = io.BytesIO(header)
    out, start = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            for elem in data_element_generator(fp, False, True):
                vr = elem.VR
                if not (isinstance(vr, str) and len(vr) == 2 and vr.isalpha() and vr.isupper()):
                    return None  # not explicit VR: an implicit header read the wrong way
                end = fp.tell()
                out.append((int(elem.tag), header[start:end]))
                start = end
        except Exception:
            return None
    return out if start == len(header) else None


def pack_headers(headers: list, names: list, ordering: int, *, dedup: bool = True) -> bytes:
    """The metadata block of a series stream (module docstring) from each slice's header bytes and file name."""
    if not headers or len(headers) != len(names):
        raise ValueError(f"one header and one name per slice, got {len(headers)} headers and {len(names)} names")
    if ordering not in ORDERINGS:
        raise ValueError(f"ordering must be one of {sorted(ORDERINGS)}, got {ordering!r}")
    common, own = b"", list(headers)
    split = [_elements(h) for h in headers] if dedup and len(headers) > 1 else None
    if split is not None and all(s is not None for s in split):
        shared = set(split[0])
        for s in split[1:]:
            shared &= set(s)
        shared_tags = {tag for tag, _ in shared}
        common = b"".join(chunk for tag, chunk in split[0] if (tag, chunk) in shared)
        own = [b"".join(chunk for tag, chunk in s if tag not in shared_tags) for s in split]
    parts = []
    for name, body in zip(names, own):
        encoded = str(name).encode("utf-8")[:0xFFFF]
        parts.append(struct.pack("<H", len(encoded)) + encoded + body)
    return b"".join([_FIXED.pack(MAGIC, LAYOUT_VERSION, ordering, 0, len(headers), len(common)), common,
                     struct.pack(f"<{len(parts)}I", *map(len, parts)), *parts])


def is_series_metadata(metadata: Optional[bytes]) -> bool:
    """Whether a metadata block is in this module's layout (it starts with MAGIC)."""
    return metadata is not None and metadata[:4] == MAGIC


@dataclass
class SeriesHeaders:
    """A parsed series metadata block: ``slice_dataset(i)`` rebuilds slice i's header."""

    ordering: int
    names: list
    common: bytes
    own: list
    source: str = "<stream>"

    @property
    def count(self) -> int:
        return len(self.names)

    @property
    def ordering_name(self) -> str:
        return ORDERINGS[self.ordering]

    def slice_dataset(self, index: int):
        """Slice ``index``'s DICOM header (a pydicom Dataset): its common and own elements."""
        import pydicom
        from pydicom.dataset import Dataset

        from edge_runtime.bitstream import InvalidBitstreamError

        ds = Dataset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                for part in (self.common, self.own[index]):
                    if part:
                        read = pydicom.dcmread(io.BytesIO(part), force=True)
                        for tag in read.keys():
                            ds[tag] = read.get_item(tag)
                list(ds)  # every element parsed now
            except Exception as exc:
                raise InvalidBitstreamError(self.source, f"the header of slice {index + 1} ({self.names[index]}) "
                                                         f"is not a DICOM data set ({exc})") from None
        if not any(k in ds for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")):
            raise InvalidBitstreamError(self.source, f"the header of slice {index + 1} ({self.names[index]}) "
                                                     f"names no SOP, study or series UID")
        return ds


def unpack_headers(blob: bytes, source=None) -> SeriesHeaders:
    """Parse a series metadata block, checking every length before use (InvalidBitstreamError)."""
    from edge_runtime.bitstream import InvalidBitstreamError

    source = str(source) if source is not None else "<stream>"
    bad = lambda what: InvalidBitstreamError(source, f"series metadata block: {what}")
    if len(blob) < _FIXED.size:
        raise bad(f"{len(blob)} bytes, shorter than its {_FIXED.size}-byte head")
    magic, version, ordering, _, count, common_len = _FIXED.unpack_from(blob)
    if magic != MAGIC:
        raise bad(f"magic {magic!r}, expected {MAGIC!r}")
    if version != LAYOUT_VERSION:
        raise bad(f"layout version {version}, this decoder reads {LAYOUT_VERSION}: use a newer edge-codec")
    if ordering not in ORDERINGS:
        raise bad(f"unknown ordering code {ordering}")
    pos = _FIXED.size
    if count < 1 or count > (len(blob) - pos) // 6:
        raise bad(f"{count} slices do not fit in {len(blob)} bytes")
    if common_len > len(blob) - pos - 4 * count:
        raise bad(f"common part of {common_len} bytes runs past the end")
    common = blob[pos:pos + common_len]
    pos += common_len
    lengths = struct.unpack_from(f"<{count}I", blob, pos)
    pos += 4 * count
    if sum(lengths) != len(blob) - pos:
        raise bad(f"slice parts of {sum(lengths)} bytes in all, {len(blob) - pos} bytes left")
    names, own = [], []
    for i, n in enumerate(lengths):
        part = blob[pos:pos + n]
        pos += n
        if n < 2 or struct.unpack_from("<H", part)[0] > n - 2:
            raise bad(f"slice {i + 1}'s part ({n} bytes) is shorter than its file name")
        k = struct.unpack_from("<H", part)[0]
        names.append(part[2:2 + k].decode("utf-8", errors="replace"))
        own.append(part[2 + k:])
    return SeriesHeaders(ordering=ordering, names=names, common=common, own=own, source=source)


# --------------------------------------------------------------------------- writing

def output_names(names: list) -> list:
    """The file name each slice is written to (module docstring): the original's, or slice_NNNN.dcm."""
    def usable(name):
        return (bool(name) and name == os.path.basename(name) and not name.startswith(".")
                and "/" not in name and "\\" not in name and "\x00" not in name and name.isprintable())

    stems = []
    for name in names:
        stem, suffix = os.path.splitext(name)
        stems.append((stem if suffix.lower() in IMAGE_SUFFIXES else name) + ".dcm")
    if all(usable(n) for n in names) and len({s.lower() for s in stems}) == len(stems) and all(
            usable(s) for s in stems):
        return stems
    width = max(4, len(str(len(names))))
    return [f"slice_{k + 1:0{width}d}.dcm" for k in range(len(names))]


def decode_series(in_path, out_dir, *, force: bool = False, bundle=None, kernels: str = "xnnpack",
                  jobs: Optional[int] = None) -> dict:
    """Decode a series stream into ``out_dir``: one DICOM file per original slice (module docstring)."""
    from edge_runtime import bitstream as bs
    from edge_runtime import runtime

    in_path, out_dir = Path(in_path), Path(out_dir)
    if not in_path.is_file():
        raise FileNotFoundError(f"{in_path}: no such file")
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: is a file; a series decodes to a folder (new or existing)")
    data = in_path.read_bytes()
    header, tiles, metadata = bs.parse(data, source=in_path)
    if not is_series(header, metadata, in_path):
        raise ValueError(f"{in_path}: holds one image, not a series of slices; decode it to a file "
                         f"(OUT.dcm, OUT.png or OUT.tif)")
    slices = unpack_headers(metadata, in_path)
    if slices.count != header.frames:
        raise bs.InvalidBitstreamError(in_path, f"series metadata lists {slices.count} slices for "
                                                f"{header.frames} frames")
    names = output_names(slices.names)
    targets = [out_dir / n for n in names]
    if not force:
        taken = [t for t in targets if t.exists()]
        if taken:
            more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
            raise FileExistsError(f"{taken[0]}: already exists{more}; use --force (force=True) to replace "
                                  f"them; nothing written")
    b, coder = runtime._codec(bundle, kernels, data, in_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    pixel_bytes = runtime.pixel_stream_bytes(data, header, tiles)
    itemsize = np.dtype(header.dtype).itemsize
    ratio = itemsize * header.rows * header.cols * header.frames * header.samples / pixel_bytes
    written = []
    with runtime._plane_pool(b, kernels, header.frames * header.samples, jobs) as plane_map:
        for first, pixels in frame_groups(data, coder=coder, model_ids=b.model_ids, source=in_path,
                                          plane_map=plane_map):
            for j in range(pixels.shape[0]):
                k = first + j
                image = Image(pixels=np.ascontiguousarray(pixels[j:j + 1]), bits_stored=header.bits_stored,
                              signed=header.signed, photometric=header.photometric, source=str(in_path))
                runtime.write_decoded_dicom(targets[k], image, header, ratio, (slices.common, slices.own[k]),
                                            lambda k=k: slices.slice_dataset(k), force)
                written.append(str(targets[k]))
    return {"input": str(in_path), "output": str(out_dir), "slices": len(written), "files": written,
            "rows": header.rows, "cols": header.cols, "ordering": slices.ordering_name}


def is_series(header, metadata: Optional[bytes], source=None) -> bool:
    """Whether a parsed stream is a series (container flag bit 4); its metadata block must then be one."""
    if header.series and not is_series_metadata(metadata):
        from edge_runtime.bitstream import InvalidBitstreamError

        raise InvalidBitstreamError(source, "flagged as a series, but its metadata block is not a series block")
    return bool(header.series)


def frame_groups(data: bytes, *, coder, model_ids=None, source=None, plane_map=None) -> Iterator:
    """(first frame index, pixels[g, rows, cols, samples]) group by group, as codec.decode_frames decodes them."""
    from edge_runtime.codec import decode_frames

    return decode_frames(data, coder=coder, model_ids=model_ids, source=source, plane_map=plane_map)


# --------------------------------------------------------------------------- encoding

def encode_series(in_dir, out_path, *, quality: Optional[int] = None, bundle=None, force: bool = False,
                  kernels: str = "xnnpack", max_error: Optional[int] = None, target_psnr: Optional[float] = None,
                  target_bpp: Optional[float] = None, jobs: Optional[int] = None, dedup: bool = True,
                  group: Optional[int] = None, fast: bool = False) -> dict:
    """Encode a folder of single-slice DICOM files of one series into one .kcd (frames = slices).

    The settings are those of runtime.encode_file. Nothing is written when the folder is refused.
    The summary adds ``slices``, ``ordering`` and ``metadata_bytes`` (the packed headers, before zlib).
    """
    from edge_runtime import bitstream as bs
    from edge_runtime import runtime

    in_dir, out_path = Path(in_dir), Path(out_path)
    runtime.check_encode_request(out_path, quality=quality, max_error=max_error, target_psnr=target_psnr,
                                 target_bpp=target_bpp, fast=fast)
    codec_options = runtime.group_options(group, series=True)
    if out_path.is_dir():
        raise IsADirectoryError(f"{out_path}: is a folder; give the .kcd file to write")
    if out_path.exists() and not force:
        raise FileExistsError(f"{out_path}: already exists; use --force (force=True) to replace it")
    series = read_series(in_dir)
    if series.padding is not None:
        codec_options["padding"] = series.padding
    metadata = pack_headers(series.headers, series.names, series.ordering, dedup=dedup)
    if len(metadata) > bs.MAX_METADATA_BYTES:
        raise InvalidImageError(in_dir, f"the {len(series.names)} slice headers take {len(metadata):,} bytes, over "
                                        f"the stream's {bs.MAX_METADATA_BYTES:,}-byte metadata limit: split the "
                                        f"series into folders of fewer slices")
    summary = runtime.encode_loaded(series.image, metadata, in_dir, out_path, quality=quality, bundle=bundle,
                                    force=force, kernels=kernels, max_error=max_error, target_psnr=target_psnr,
                                    target_bpp=target_bpp, jobs=jobs, codec_options=codec_options, fast=fast)
    summary.update(slices=len(series.names), ordering=ORDERINGS[series.ordering], metadata_bytes=len(metadata))
    return summary


def describe(header, metadata: Optional[bytes], source=None) -> Optional[dict]:
    """``info``'s view of a series stream (slices, ordering, group length), or None for another stream."""
    if not is_series(header, metadata, source):
        return None
    slices = unpack_headers(metadata, source)
    return {"slices": slices.count, "ordering": slices.ordering_name, "group": header.group,
            "common_bytes": len(slices.common)}
