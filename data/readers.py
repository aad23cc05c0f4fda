"""Read DICOM, PNG and TIFF files into an :class:`~data.image.Image`.

The format is chosen from the file's content (the DICOM ``DICM`` prefix or a
data set that parses, the PNG and TIFF signatures), not from its name.
Pixels come back in their stored integer form: MONOCHROME1 is never
inverted and rescale slope/intercept are recorded, not applied. PALETTE
COLOR is expanded through its lookup table to RGB and YBR colour spaces are
converted to RGB, so every colour image is RGB. A 16-bit lookup table whose
entries are all 8-bit values scaled to 16 bits (c x 257, or c x 256: the
value in the high byte, as most ultrasound carts write them) gives 8-bit RGB
(c): the colours the table displays, at the one depth the US and Secondary
Capture IODs allow for RGB. ``palette="indices"`` keeps the stored indices
instead (one sample, photometric PALETTE COLOR, the tables in the data set).

Every failure to read is an :class:`~data.image.InvalidImageError` naming
the file, saying what is wrong and, where there is one, the way out.
This module imports no TensorFlow: the edge runtime uses it.

NRRD volumes (the corpus's pyradiomics volumes, data.corpus.volumes) are read by :func:`read_nrrd`:
attached header, raw / gzip / bzip2 data, integer and float types, either byte order; detached data
files, ``line skip`` / ``byte skip`` and text encodings are refused (:class:`NRRDError`).
"""
from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from data.image import Image, InvalidImageError

__all__ = ["MAX_IMAGE_BYTES", "IMAGE_SUFFIXES", "NRRDError", "read_image", "image_from_dataset", "list_images",
           "nrrd_header", "nrrd_spacing", "read_nrrd", "read_nrrd_bytes"]

MAX_IMAGE_BYTES = 2 ** 31
"""Default ceiling on decoded pixel bytes; larger images are refused before allocation."""

IMAGE_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima", ".png", ".tif", ".tiff"})
"""File name endings :func:`list_images` treats as images (besides extension-less DICOM)."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_HEAD_BYTES = 132


def read_image(path, frame: Optional[int] = None, *, max_bytes: int = MAX_IMAGE_BYTES,
               palette: str = "rgb") -> Image:
    """Read one DICOM, PNG or TIFF file.

    ``frame`` selects a single frame (0-based) of a multi-frame file; the
    result then has one frame. Images whose decoded pixels would exceed
    ``max_bytes`` are refused from their header values, before any pixel
    buffer is allocated. ``palette``: "rgb" expands PALETTE COLOR through its
    lookup table, "indices" keeps the indices (see the module docstring).
    """
    if palette not in ("rgb", "indices"):
        raise ValueError(f"palette must be 'rgb' or 'indices', got {palette!r}")
    path = Path(path)
    head = _read_head(path)
    kind = _sniff(head)
    if frame is not None and (not isinstance(frame, (int, np.integer)) or frame < 0):
        raise ValueError(f"frame must be a non-negative integer or None, got {frame!r}")
    if kind == "png":
        return _read_png(path, frame, max_bytes)
    if kind == "tiff":
        return _read_tiff(path, frame, max_bytes)
    return _read_dicom(path, head, frame, max_bytes, palette)


def list_images(folder) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted), skipping hidden files and folders.

    A file is a candidate if its name ends in one of :data:`IMAGE_SUFFIXES`, or
    if it has no extension and starts like a DICOM file (DICOM archives often
    name files ``IM0001``); ``DICOMDIR`` indexes are skipped.
    """
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            p = Path(dirpath) / name
            suffix = p.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                found.append(p)
            elif suffix == "" and _looks_like_dicom(p):
                found.append(p)
    return sorted(found)


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _read_head(path: Path) -> bytes:
    """The first bytes of ``path``, after checking it is a non-empty regular file."""
    if not path.exists():
        raise InvalidImageError(path, "no such file")
    if path.is_dir():
        raise InvalidImageError(
            path, "is a folder, not an image file: use data.readers.list_images(folder) to find its images")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError as e:
        raise InvalidImageError(path, f"cannot be opened ({e.strerror or e})") from e
    if size == 0:
        raise InvalidImageError(path, "is empty (0 bytes)")
    return head


def _sniff(head: bytes) -> str:
    # DICM first: a DICOM preamble may legally hold a TIFF header (dual-format files).
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head[:4] in _TIFF_MAGICS:
        return "tiff"
    return "dicom"


def _describe_head(head: bytes) -> str:
    """What kind of content a file starts with, for error messages; never the content itself (the file
    may be anything a folder or a link holds, and messages end up in logs and batch summaries)."""
    sample = head[:16]
    if sample and all(32 <= b < 127 or b in b"\r\n\t" for b in sample):
        return "it looks like a text file"
    return "it starts with binary data of no image format keras_codec reads"


def _check_size(path, rows, cols, frames, samples, itemsize, max_bytes):
    nbytes = rows * cols * frames * samples * itemsize
    if rows <= 0 or cols <= 0 or frames <= 0 or samples <= 0:
        raise InvalidImageError(
            path, f"header gives an empty image ({rows} rows x {cols} columns x {frames} frames x {samples} samples)")
    if nbytes > max_bytes:
        raise InvalidImageError(
            path, f"decoded pixels would take {nbytes:,} bytes ({frames} frames x {rows} x {cols} x {samples} "
                  f"samples x {itemsize} bytes), over the limit of {max_bytes:,}: "
                  f"read one frame with frame=N or raise max_bytes")


# --------------------------------------------------------------------------- DICOM

_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


def _read_dicom(path: Path, head: bytes, frame, max_bytes, palette: str = "rgb") -> Image:
    import pydicom
    from pydicom.errors import InvalidDicomError

    has_prefix = head[128:132] == b"DICM"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path, force=not has_prefix)
        except InvalidDicomError as e:
            raise InvalidImageError(path, f"not a DICOM file: {e}") from e
        except Exception as e:
            what = "DICOM file" if has_prefix else "file (not PNG, TIFF or DICOM?)"
            raise InvalidImageError(path, f"cannot parse this {what}: {type(e).__name__}: {e}") from e
    notes = [str(w.message) for w in caught]
    if has_prefix and "PixelData" not in ds:
        cut = _truncation(ds, path.stat().st_size)
        if cut:
            raise InvalidImageError(path, f"is truncated inside its DICOM header ({cut}; so far no Pixel Data, "
                                          f"{_object_kind(ds)}): the file was cut short, copy it again from "
                                          f"its source")
    if not has_prefix and not _plausible_dataset(ds):
        named = path.suffix.lower()
        claim = f"named {named} but " if named in (".png", ".tif", ".tiff") else ""
        raise InvalidImageError(
            path, f"{claim}not a DICOM, PNG or TIFF file: no 'DICM' prefix, no PNG/TIFF signature and the "
                  f"content does not parse as a DICOM data set ({_describe_head(head)})")
    return image_from_dataset(ds, source=path, frame=frame, max_bytes=max_bytes, notes=notes, palette=palette)


def _truncation(ds, size: int):
    """How a data set read without complaint shows a cut file, or None: no element at all, an element
    whose value runs past the end, or bytes left after the last element (the parser stops quietly
    inside a cut element header). A last element of undefined length (a sequence) is not measured."""
    tags = list(ds.keys())
    if not tags:
        return "the data set stops before its first element"
    spans = []
    for tag in tags:
        elem = ds.get_item(tag)
        tell, length = getattr(elem, "value_tell", None), getattr(elem, "length", None)
        spans.append(None if tell is None or length in (None, 0xFFFFFFFF) else tell + length)
    known = [e for e in spans if e is not None]
    if known and max(known) > size:
        return f"its last element needs {max(known):,} bytes, the file has {size:,}"
    if spans[-1] is not None and spans[-1] < size:
        return f"the data set stops at byte {spans[-1]:,} of {size:,}"
    return None


def _plausible_dataset(ds) -> bool:
    """Whether a data set parsed without a preamble looks like real DICOM rather than noise."""
    try:
        tags = list(ds.keys())
    except Exception:
        return False
    return any(t.group in (0x0008, 0x0010, 0x0020, 0x0028, 0x7FE0) for t in tags)


def _int_attr(ds, keyword: str, path, default=None) -> int:
    """An integer header value, with a readable error when it is missing or malformed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            present = keyword in ds and ds[keyword].value not in (None, "")
            value = ds[keyword].value if present else None
        if not present:
            if default is None:
                raise InvalidImageError(path, f"required DICOM element {keyword} is missing")
            return default
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0]
        return int(value)
    except InvalidImageError:
        raise
    except Exception as e:
        raw = _raw_value(ds, keyword)
        raise InvalidImageError(
            path, f"DICOM element {keyword} has an invalid value {raw!r} ({e}); the header is corrupt "
                  f"or uses a wrong VR") from e


def _raw_value(ds, keyword):
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    try:
        elem = ds.get_item(tag)
        return getattr(elem, "value", elem)
    except Exception:
        return "?"


def _float_attr(ds, keyword: str, default: float) -> float:
    try:
        value = ds.get(keyword, None)
        if value is None or value == "":
            return default
        return float(value)
    except Exception:
        return default


def _transfer_syntax(ds, path):
    """The data set's transfer syntax, inferred from how it was parsed when the meta header lacks one."""
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pydicom.dataset import FileMetaDataset

    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid:
        return UID(str(uid).strip())
    if ds["PixelData"].is_undefined_length:
        raise InvalidImageError(
            path, "has compressed (encapsulated) pixel data but no Transfer Syntax UID (0002,0010) in its "
                  "meta header, so the codec is unknown: rewrite the file with a complete meta header")
    encoding = getattr(ds, "original_encoding", (None, None))
    implicit, little = encoding
    if implicit is None:
        raise InvalidImageError(path, "has no Transfer Syntax UID (0002,0010) and its encoding is unknown")
    uid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid
    return uid


def image_from_dataset(ds, *, source=None, frame: Optional[int] = None, max_bytes: int = MAX_IMAGE_BYTES,
                       notes=(), palette: str = "rgb") -> Image:
    """Decode a pydicom Dataset (already read) into an Image; the Dataset is kept in ``Image.dataset``.

    ``notes`` are the parser's warnings, used to tell a truncated file from one without pixels.
    ``palette="indices"`` keeps a PALETTE COLOR image's indices (see the module docstring).
    """
    path = source if source is not None else "<dataset>"
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise InvalidImageError(path, "has floating-point pixel data, which keras_codec does not code")
        truncated = [n for n in notes if "end of file" in n.lower() or "truncat" in n.lower()]
        if truncated:
            raise InvalidImageError(path, f"is truncated before its pixel data ({truncated[0]})")
        kind = _object_kind(ds)
        raise InvalidImageError(path, f"has no Pixel Data (7FE0,0010): it is {kind}, not an image")

    ts = _transfer_syntax(ds, path)
    rows = _int_attr(ds, "Rows", path)
    cols = _int_attr(ds, "Columns", path)
    samples = _int_attr(ds, "SamplesPerPixel", path, default=1)
    frames = _int_attr(ds, "NumberOfFrames", path, default=1)
    bits_allocated = _int_attr(ds, "BitsAllocated", path)
    bits_stored = _int_attr(ds, "BitsStored", path, default=bits_allocated)
    pixel_rep = _int_attr(ds, "PixelRepresentation", path, default=0)
    photometric = str(ds.get("PhotometricInterpretation", "") or ("MONOCHROME2" if samples == 1 else "RGB")).strip()

    if bits_allocated not in (1, 8, 16):
        raise InvalidImageError(
            path, f"has {bits_allocated}-bit pixels (BitsAllocated {bits_allocated}); keras_codec reads "
                  f"1, 8 and 16-bit images")
    if not 1 <= bits_stored <= bits_allocated:
        raise InvalidImageError(path, f"BitsStored {bits_stored} does not fit BitsAllocated {bits_allocated}")
    if samples not in (1, 3):
        raise InvalidImageError(path, f"has {samples} samples per pixel; keras_codec reads 1 (gray) or 3 (colour)")
    frames = max(frames, 1)
    if frame is not None and frame >= frames:
        raise InvalidImageError(path, f"has {frames} frame(s); frame {frame} does not exist")

    keep_indices = palette == "indices" and photometric == "PALETTE COLOR"
    palette = photometric == "PALETTE COLOR" and not keep_indices
    out_samples = 3 if palette else samples
    out_itemsize = 2 if (palette or bits_allocated == 16) else 1
    _check_size(path, rows, cols, 1 if frame is not None else frames, out_samples, out_itemsize, max_bytes)

    arr, meta = _decode(ds, ts, path, frame)
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    photometric = str(getattr(meta.get("photometric_interpretation"), "value",
                              meta.get("photometric_interpretation", photometric))).strip()
    bits_stored = int(meta.get("bits_stored", bits_stored))
    signed = int(meta.get("pixel_representation", pixel_rep)) == 1

    if palette:
        arr, bits_stored = _expand_palette(arr, ds, path)
        photometric, signed = "RGB", False
    elif photometric.startswith("YBR"):
        arr = _ybr_to_rgb(arr, photometric, path)
        photometric = "RGB"
    elif photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB") and not keep_indices:
        raise InvalidImageError(
            path, f"photometric interpretation {photometric!r} is not supported (expected MONOCHROME1/2, "
                  f"RGB, YBR_* or PALETTE COLOR)")

    small = bits_stored <= 8 if palette else bits_allocated <= 8
    dtype = (np.int8 if small else np.int16) if signed else (np.uint8 if small else np.uint16)
    out_samples = 3 if photometric == "RGB" else 1
    if arr.size % (rows * cols * out_samples) or (arr.ndim > 2 and arr.shape[-1] not in (out_samples, cols)):
        raise InvalidImageError(
            path, f"photometric interpretation {photometric} does not match SamplesPerPixel {samples}")
    pixels = np.ascontiguousarray(arr.reshape(-1, rows, cols, out_samples).astype(dtype, copy=False))
    return Image(
        pixels=pixels,
        bits_stored=bits_stored,
        signed=signed,
        photometric=photometric,
        rescale_slope=_float_attr(ds, "RescaleSlope", 1.0),
        rescale_intercept=_float_attr(ds, "RescaleIntercept", 0.0),
        modality=str(ds.get("Modality", "") or "OT").strip() or "OT",
        source=str(source) if source is not None else None,
        dataset=ds,
    )


def _object_kind(ds) -> str:
    sop = ds.get("SOPClassUID")
    if sop is not None:
        name = getattr(sop, "name", str(sop))
        return f"a {name} object"
    modality = ds.get("Modality")
    return f"a {modality} object" if modality else "a non-image data set"


def _decode(ds, ts, path, frame):
    """Run pydicom's decoder for ``ts``, turning its failures into InvalidImageErrors."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ts)
    except NotImplementedError as e:
        raise InvalidImageError(
            path, f"transfer syntax {getattr(ts, 'name', ts)} ({ts}) has no pydicom decoder: convert the file "
                  f"to an uncompressed or lossless JPEG/JPEG-LS/JPEG 2000/RLE transfer syntax "
                  f"(e.g. dcmtk dcmconv or gdcmconv)") from e
    plugin = _threaded_j2k(decoder)
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise InvalidImageError(
            path, f"no plugin installed to decode {ts.name} ({ts}): install {missing} "
                  f"(for example: pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # YBR stays YBR here: _ybr_to_rgb converts frame by frame (pydicom converts a whole
            # multi-frame array at once in float64, 8 bytes a sample: 0.9 GB for a 120-frame cine)
            if plugin:
                try:
                    return decoder.as_array(ds, index=frame, as_rgb=False, decoding_plugin=plugin)
                except Exception:
                    pass  # pydicom's own plugins decide, and word the error
            return decoder.as_array(ds, index=frame, as_rgb=False)
    except InvalidImageError:
        raise
    except Exception as e:
        text = str(e)
        if "less than expected" in text or "truncat" in text.lower() or "too short" in text.lower():
            raise InvalidImageError(path, f"pixel data is truncated: {text.splitlines()[0]}") from e
        first = " ".join(line.strip() for line in text.splitlines()[:3])
        raise InvalidImageError(
            path, f"cannot decode its {ts.name} pixel data ({type(e).__name__}: {first}); the installed "
                  f"plugins may not support this variant: convert it to an uncompressed transfer syntax") from e


def _threaded_j2k(decoder) -> str:
    """The label of data.j2k_decoder's plugin when `decoder` is for a lossless JPEG 2000 syntax and the
    plugin is available (registered on first use), else ''."""
    from data import j2k_decoder

    if getattr(decoder, "UID", None) not in j2k_decoder.DECODER_DEPENDENCIES:
        return ""
    try:
        decoder.add_plugin(j2k_decoder.LABEL, ("data.j2k_decoder", "decode_frame"))
    except ValueError:  # registered already
        pass
    return j2k_decoder.LABEL if j2k_decoder.LABEL in decoder.available_plugins else ""


def _expand_palette(arr, ds, path):
    """PALETTE COLOR indices through the file's LUT to RGB; returns (rgb, bit depth): 8 for an 8-bit LUT or a
    16-bit one holding 8-bit values (palette_lut_divisor), else 16."""
    from pydicom.pixels import apply_color_lut

    try:
        descriptor = ds.RedPaletteColorLookupTableDescriptor
        depth = int(descriptor[2])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rgb = apply_color_lut(arr, ds)
    except Exception as e:
        raise InvalidImageError(path, f"PALETTE COLOR image whose lookup table cannot be applied: {e}") from e
    if depth not in (8, 16):
        raise InvalidImageError(path, f"palette lookup table has {depth}-bit entries; expected 8 or 16")
    if depth == 16:
        divisor = palette_lut_divisor(ds)
        if divisor:
            rgb = rgb >> 8 if divisor == 256 else rgb // divisor
            depth = 8
    return rgb.astype(np.uint8 if depth == 8 else np.uint16, copy=False), depth


def palette_lut(ds) -> np.ndarray:
    """Every entry of a PALETTE COLOR data set's lookup tables, (entries, 3) as pydicom applies them."""
    from pydicom.pixels import apply_color_lut

    descriptor = ds.RedPaletteColorLookupTableDescriptor
    count, first = int(descriptor[0]) or 65536, int(descriptor[1])
    index = np.arange(first, first + count)
    dtype = np.uint8 if int(ds.get("BitsAllocated", 8)) <= 8 and index[-1] < 256 else np.uint16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(apply_color_lut(index.astype(dtype), ds)).reshape(-1, 3)


def palette_lut_divisor(ds) -> int:
    """257 or 256 when every entry of a 16-bit palette LUT is an 8-bit value c stored as c x 257 or c x 256
    (the high byte: c = v >> 8); 0 when the table holds 16-bit values. 257 is tried first: full scale."""
    try:
        lut = palette_lut(ds).astype(np.int64)
    except Exception:
        return 0
    for divisor in (257, 256):
        if not (lut % divisor).any():
            return divisor
    return 0


def _ybr_to_rgb(arr, photometric, path):
    from pydicom.pixels import convert_color_space

    source = "YBR_FULL" if photometric in ("YBR_FULL", "YBR_FULL_422") else photometric
    try:
        if arr.ndim == 4:  # frame by frame, in place: pydicom converts in float64 (8 bytes a sample)
            for f in range(arr.shape[0]):
                arr[f] = convert_color_space(arr[f], source, "RGB")
            return arr
        return convert_color_space(arr, source, "RGB")
    except Exception as e:
        raise InvalidImageError(
            path, f"colour space {photometric} cannot be converted to RGB ({e})") from e


# --------------------------------------------------------------------------- PNG / TIFF

def _read_png(path: Path, frame, max_bytes) -> Image:
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise InvalidImageError(path, "PNG signature but no IHDR header: the file is truncated or corrupt")
    width, height, depth, color_type = struct.unpack(">IIBB", head[16:26])
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(color_type, 4)
    _check_size(path, height, width, 1, channels, 2 if depth == 16 else 1, max_bytes)
    if frame not in (None, 0):
        raise InvalidImageError(path, f"a PNG has one frame; frame {frame} does not exist")
    return _from_cv_pages(path, [_cv_read(path, "PNG")])


def _read_tiff(path: Path, frame, max_bytes) -> Image:
    import cv2

    pages = _tiff_pages(path)
    if frame is not None and frame >= len(pages):
        raise InvalidImageError(path, f"has {len(pages)} page(s); frame {frame} does not exist")
    chosen = pages if frame is None else [pages[frame]]
    for rows, cols, spp, bps in chosen:
        _check_size(path, rows, cols, len(chosen), spp, max(1, (bps + 7) // 8), max_bytes)
    if len(pages) == 1:
        return _from_cv_pages(path, [_cv_read(path, "TIFF")])
    ok, images = cv2.imreadmulti(str(path), flags=cv2.IMREAD_UNCHANGED)
    if not ok or not images:
        raise InvalidImageError(path, "OpenCV could not decode this multi-page TIFF (unsupported compression?)")
    if frame is not None:
        images = [images[frame]]
    return _from_cv_pages(path, list(images))


def _tiff_pages(path: Path):
    """(rows, cols, samples, bits) of every page, read from the TIFF directories without decoding."""
    with open(path, "rb") as f:
        data = f.read()
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    try:
        if big:
            offset = struct.unpack(order + "Q", data[8:16])[0]
        else:
            offset = struct.unpack(order + "I", data[4:8])[0]
        pages, seen = [], set()
        while offset and offset not in seen and len(pages) < 100000:
            seen.add(offset)
            tags, offset = _tiff_ifd(data, offset, order, big)
            rows, cols = tags.get(257), tags.get(256)
            if rows is None or cols is None:
                raise ValueError("a directory without ImageWidth/ImageLength")
            pages.append((rows, cols, tags.get(277, 1), tags.get(258, 1)))
    except (struct.error, ValueError, IndexError) as e:
        raise InvalidImageError(path, f"TIFF structure is corrupt or truncated ({e})") from e
    if not pages:
        raise InvalidImageError(path, "TIFF file with no image directory")
    return pages


def _tiff_ifd(data, offset, order, big):
    """The first value of each integer tag in one TIFF directory, and the next directory's offset."""
    count_fmt, entry_size, head = ("Q", 20, 8) if big else ("H", 12, 2)
    (count,) = struct.unpack_from(order + count_fmt, data, offset)
    tags = {}
    sizes = {3: "H", 4: "I", 16: "Q"}
    for i in range(count):
        pos = offset + head + i * entry_size
        tag, typ = struct.unpack_from(order + "HH", data, pos)
        if typ in sizes:
            n = struct.unpack_from(order + ("Q" if big else "I"), data, pos + 4)[0]
            value_pos = pos + (12 if big else 8)
            fmt = order + sizes[typ]
            inline = struct.calcsize(fmt) * n <= (8 if big else 4)
            if not inline:
                value_pos = struct.unpack_from(order + ("Q" if big else "I"), data, value_pos)[0]
            tags[tag] = struct.unpack_from(fmt, data, value_pos)[0]
    next_pos = offset + head + count * entry_size
    (nxt,) = struct.unpack_from(order + ("Q" if big else "I"), data, next_pos)
    return tags, nxt


def _cv_read(path: Path, kind: str):
    import cv2

    buf = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InvalidImageError(path, f"{kind} signature but OpenCV could not decode it (truncated or corrupt?)")
    return img


def _from_cv_pages(path: Path, pages) -> Image:
    """OpenCV arrays (BGR order) to an Image with RGB or gray samples."""
    out = []
    for img in pages:
        if img.ndim == 2:
            img = img[..., None]
        channels = img.shape[2]
        if channels == 4:
            opaque = np.iinfo(img.dtype).max if img.dtype.kind in "ui" else 1
            if not np.all(img[..., 3] == opaque):
                raise InvalidImageError(
                    path, "has a transparency (alpha) channel that is not fully opaque; keras_codec codes gray "
                          "or RGB images: remove the alpha channel first")
            img = img[..., :3]
            channels = 3
        if channels == 3:
            img = img[..., ::-1]
        elif channels != 1:
            raise InvalidImageError(path, f"has {channels} channels; keras_codec reads gray or RGB images")
        out.append(img.reshape(img.shape[0], img.shape[1], -1))
    shapes = {p.shape for p in out}
    dtypes = {p.dtype for p in out}
    if len(shapes) > 1 or len(dtypes) > 1:
        raise InvalidImageError(path, f"pages differ in size or type ({sorted(map(str, shapes))}); "
                                      f"read one page with frame=N")
    pixels = np.stack(out)
    dtype = pixels.dtype
    if dtype not in (np.uint8, np.uint16, np.int8, np.int16):
        raise InvalidImageError(
            path, f"has {dtype} samples; keras_codec reads 8 and 16-bit integer images")
    return Image(
        pixels=np.ascontiguousarray(pixels),
        bits_stored=8 * dtype.itemsize,
        signed=dtype.kind == "i",
        photometric="RGB" if pixels.shape[3] == 3 else "MONOCHROME2",
        source=str(path),
    )


# --------------------------------------------------------------------------- NRRD volumes

class NRRDError(InvalidImageError):
    """A file this reader cannot read as an NRRD volume; the message names it and says why."""


_NRRD_TYPES = {}
for _names, _code in (
        (("signed char", "int8", "int8_t"), "i1"),
        (("uchar", "unsigned char", "uint8", "uint8_t"), "u1"),
        (("short", "short int", "signed short", "signed short int", "int16", "int16_t"), "i2"),
        (("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), "u2"),
        (("int", "signed int", "int32", "int32_t"), "i4"),
        (("uint", "unsigned int", "uint32", "uint32_t"), "u4"),
        (("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
          "int64_t"), "i8"),
        (("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), "u8"),
        (("float",), "f4"),
        (("double",), "f8")):
    for _n in _names:
        _NRRD_TYPES[_n] = _code
_NRRD_HEADER_LIMIT = 1 << 16


def read_nrrd(path) -> tuple[np.ndarray, dict]:
    """The volume of an NRRD file (attached header) and its header fields (lower-case keys).

    The array's axes are the NRRD ``sizes`` reversed (NRRD lists the fastest axis first), so a
    ``sizes: 512 512 61`` CT volume comes back as (61, 512, 512): slices, rows, columns.
    """
    path = Path(path)
    if not path.is_file():
        raise NRRDError(path, "no such file")
    return read_nrrd_bytes(path.read_bytes(), source=path)


def nrrd_header(path) -> dict:
    """The header fields of an NRRD file, read without its data (the first 64 KiB at most)."""
    path = Path(path)
    if not path.is_file():
        raise NRRDError(path, "no such file")
    with open(path, "rb") as f:
        head = f.read(_NRRD_HEADER_LIMIT)
    return _nrrd_fields(head, path)[0]


def _nrrd_fields(blob: bytes, source) -> tuple[dict, int]:
    """(fields, offset of the data) of an NRRD header."""
    if not blob.startswith(b"NRRD000"):
        raise NRRDError(source, "not an NRRD file (it does not start with 'NRRD000x')")
    fields, pos = {}, blob.index(b"\n") + 1 if b"\n" in blob else len(blob)
    while True:
        end = blob.find(b"\n", pos)
        if end < 0:
            raise NRRDError(source, "the header never ends (no blank line before the data)")
        line = blob[pos:end].decode("latin-1").rstrip("\r")
        pos = end + 1
        if not line:
            break
        if line.startswith("#") or line.find(":=") == line.find(":") >= 0:
            continue  # comments and key:=value pairs carry nothing the pixels need
        if ": " not in line:
            raise NRRDError(source, f"header line {line!r} is not 'field: value'")
        key, value = line.split(": ", 1)
        fields[key.strip().lower()] = value.strip()
    for key in ("type", "sizes", "encoding"):
        if key not in fields:
            raise NRRDError(source, f"the header has no {key!r} field")
    return fields, pos


def read_nrrd_bytes(blob: bytes, source="<bytes>") -> tuple[np.ndarray, dict]:
    """:func:`read_nrrd` on the bytes of a file."""
    import bz2
    import gzip

    fields, pos = _nrrd_fields(blob, source)
    for key in ("data file", "datafile"):
        if key in fields:
            raise NRRDError(source, f"detached data ({key}: {fields[key]}) is not supported; "
                                    f"give the file with the data attached")
    for key in ("line skip", "lineskip", "byte skip", "byteskip"):
        if fields.get(key, "0").strip() != "0":
            raise NRRDError(source, f"{key} {fields[key]} is not supported")
    kind = _NRRD_TYPES.get(fields["type"].lower())
    if kind is None:
        raise NRRDError(source, f"type {fields['type']!r} is not supported (integers and floats are)")
    try:
        sizes = [int(v) for v in fields["sizes"].split()]
    except ValueError:
        raise NRRDError(source, f"sizes {fields['sizes']!r} are not whole numbers") from None
    if "dimension" in fields and fields["dimension"] != str(len(sizes)):
        raise NRRDError(source, f"dimension {fields['dimension']} but {len(sizes)} sizes")
    if not sizes or min(sizes) < 1:
        raise NRRDError(source, f"sizes {fields['sizes']!r} must be positive")
    endian = fields.get("endian", "little").lower()
    if np.dtype(kind).itemsize > 1 and endian not in ("little", "big"):
        raise NRRDError(source, f"endian {endian!r} is neither little nor big")
    dtype = np.dtype(("<" if endian == "little" else ">") + kind)
    count = int(np.prod(sizes))
    if count * dtype.itemsize > MAX_IMAGE_BYTES:
        raise NRRDError(source, f"{' x '.join(map(str, sizes))} samples would take more than "
                                f"{MAX_IMAGE_BYTES:,} bytes")
    encoding = fields["encoding"].lower()
    payload = blob[pos:]
    try:
        if encoding in ("gzip", "gz"):
            payload = gzip.decompress(payload)
        elif encoding in ("bzip2", "bz2"):
            payload = bz2.decompress(payload)
        elif encoding != "raw":
            raise NRRDError(source, f"encoding {encoding!r} is not supported (raw, gzip and bzip2 are)")
    except (OSError, EOFError, ValueError) as exc:
        if isinstance(exc, NRRDError):
            raise
        raise NRRDError(source, f"the {encoding} data does not decompress ({exc})") from None
    if len(payload) != count * dtype.itemsize:
        raise NRRDError(source, f"{len(payload)} bytes of data, expected {count * dtype.itemsize} "
                                f"({' x '.join(map(str, sizes))} of {fields['type']})")
    volume = np.frombuffer(payload, dtype=dtype).reshape(sizes[::-1])
    return volume.astype(dtype.newbyteorder("="), copy=False), fields


def nrrd_spacing(fields: dict) -> tuple:
    """Sample spacing along the NRRD axes (fastest first: x, y, z) from ``space directions``; 1.0 where the
    header gives none."""
    text = fields.get("space directions", "")
    vectors = []
    for part in text.replace(" ", "").split(")("):
        part = part.strip("()")
        try:
            vectors.append(float(np.linalg.norm([float(v) for v in part.split(",")])))
        except ValueError:
            vectors.append(1.0)
    sizes = fields.get("sizes", "").split()
    return tuple(vectors) if len(vectors) == len(sizes) else tuple(1.0 for _ in sizes)
