"""Write an :class:`~data.image.Image` as DICOM, PNG or TIFF, atomically.

Every writer encodes the whole file in memory, writes it to a hidden
temporary file in the destination folder, fsyncs it and moves it into place,
so a reader never sees a half-written image and a crash leaves the old file
(or none) behind. An existing file is only replaced with ``overwrite=True``.

DICOM output is always uncompressed Explicit VR Little Endian. When the image
came from a DICOM file its data set is copied (patient, study and series
identity kept) with new pixel data and a new SOP Instance UID; otherwise a
minimal Secondary Capture data set is built.

Lossy Image Compression (0028,2110): with ``lossy=True`` it is set to "01"
and the ratio and method are appended to any earlier values (the source may
already have been lossy). With ``lossy=False`` the source's values are kept
as they are, including "01" (once lossy, always lossy); when the source says
nothing, nothing is added, because the history of the pixels is unknown.
This module imports no TensorFlow: the edge runtime uses it.
"""
from __future__ import annotations

import copy
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from data.image import Image, InvalidImageError

__all__ = ["write_image", "write_png", "write_tiff", "write_dicom", "atomic_write", "DEFAULT_LOSSY_METHOD"]

DEFAULT_LOSSY_METHOD = "KERAS_CODEC"
"""Lossy Image Compression Method (0028,2114) recorded when none is given."""

_CS_PATTERN = re.compile(r"^[A-Z0-9_ ]{1,16}$")

# Elements describing the source's pixel encoding; replaced or dropped in a copy.
_PIXEL_DATA_TAGS = {
    0x7FE00001, 0x7FE00002, 0x7FE00008, 0x7FE00009, 0x7FE00010, 0x00287FE0,  # pixel data, offsets, URL
    0x00280106, 0x00280107,  # Smallest/Largest Image Pixel Value: stale once pixels change
}
_PALETTE_TAGS = {
    0x00281101, 0x00281102, 0x00281103, 0x00281104,  # LUT descriptors
    0x00281199,  # Palette Color LUT UID
    0x00281201, 0x00281202, 0x00281203, 0x00281204,  # LUT data
    0x00281221, 0x00281222, 0x00281223,  # segmented LUT data
}


def write_image(path, image: Image, *, overwrite: bool = False, **kwargs) -> Path:
    """Write ``image`` in the format named by the extension of ``path`` (.dcm, .png, .tif, .tiff)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".dcm", ".dicom"):
        return write_dicom(path, image, overwrite=overwrite, **kwargs)
    if suffix == ".png":
        return write_png(path, image, overwrite=overwrite, **kwargs)
    if suffix in (".tif", ".tiff"):
        return write_tiff(path, image, overwrite=overwrite, **kwargs)
    raise ValueError(
        f"{path}: cannot tell the image format from the extension {suffix or '(none)'!r}; "
        f"use .dcm, .png, .tif or .tiff")


def write_png(path, image: Image, frame: int = 0, *, overwrite: bool = False) -> Path:
    """Write one frame as an 8 or 16-bit gray or RGB PNG (unsigned images only)."""
    import cv2

    path = Path(path)
    _check_image(image)
    if image.signed:
        raise InvalidImageError(
            path, "PNG holds unsigned samples only and this image is signed: write DICOM (.dcm) or TIFF instead")
    if not 0 <= frame < image.frames:
        raise ValueError(f"frame {frame} out of range: the image has {image.frames} frame(s)")
    ok, buf = cv2.imencode(".png", _to_cv(image.pixels[frame]))
    if not ok:
        raise InvalidImageError(path, "OpenCV could not encode this image as PNG")
    atomic_write(path, buf.tobytes(), overwrite)
    return path


def write_tiff(path, image: Image, *, overwrite: bool = False) -> Path:
    """Write every frame as one page of a (lossless) TIFF; signed samples are kept signed."""
    import cv2

    path = Path(path)
    _check_image(image)
    pages = [_to_cv(image.pixels[i]) for i in range(image.frames)]
    if len(pages) == 1:
        ok, buf = cv2.imencode(".tiff", pages[0])
    else:
        ok, buf = cv2.imencodemulti(".tiff", pages)
    if not ok:
        raise InvalidImageError(path, "OpenCV could not encode this image as TIFF")
    atomic_write(path, np.asarray(buf).tobytes(), overwrite)
    return path


def write_dicom(path, image: Image, *, lossy: bool = False, ratio: Optional[float] = None,
                method: Optional[str] = None, overwrite: bool = False, mark_lossless: bool = False) -> Path:
    """Write ``image`` as an uncompressed DICOM file with a new SOP Instance UID.

    With ``lossy=True``, ``ratio`` (original size / compressed size) is
    required and ``method`` defaults to :data:`DEFAULT_LOSSY_METHOD`. With
    ``mark_lossless=True`` (a lossless decode) Lossy Image Compression is set to
    "00", unless the source already says "01" (once lossy, always lossy).
    """
    import pydicom

    path = Path(path)
    _check_image(image)
    if lossy:
        if ratio is None or not np.isfinite(ratio) or ratio <= 0:
            raise ValueError(f"lossy=True needs a positive compression ratio, got ratio={ratio!r}")
        method = DEFAULT_LOSSY_METHOD if method is None else method
        if not _CS_PATTERN.match(method):
            raise ValueError(
                f"method {method!r} is not a valid DICOM code string (1-16 of A-Z, 0-9, space, underscore)")
    elif ratio is not None or method is not None:
        raise ValueError("ratio and method describe lossy compression: pass them with lossy=True")

    ds = _dataset_for(image)
    _set_pixels(ds, image)
    if lossy:
        _mark_lossy(ds, ratio, method)
    elif mark_lossless and str(ds.get("LossyImageCompression", "")).strip() != "01":
        ds.LossyImageCompression = "00"
    buf = io.BytesIO()
    try:
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    except Exception as e:
        raise InvalidImageError(path, f"the data set cannot be written as DICOM ({type(e).__name__}: {e})") from e
    atomic_write(path, buf.getvalue(), overwrite)
    return path


# --------------------------------------------------------------------------- helpers

def _check_image(image: Image) -> None:
    if image.pixels.dtype not in (np.uint8, np.uint16, np.int8, np.int16):
        raise ValueError(f"image pixels must be uint8, uint16, int8 or int16, got {image.pixels.dtype}")
    if image.samples not in (1, 3):
        raise ValueError(f"image must have 1 (gray) or 3 (RGB) samples, got {image.samples}")
    if image.signed != (image.pixels.dtype.kind == "i"):
        raise ValueError(f"image.signed={image.signed} disagrees with its dtype {image.pixels.dtype}")


def _to_cv(frame: np.ndarray) -> np.ndarray:
    """One (rows, cols, samples) frame in OpenCV's layout (2-D gray or BGR)."""
    frame = np.ascontiguousarray(frame.astype(frame.dtype.newbyteorder("="), copy=False))
    if frame.shape[2] == 1:
        return frame[:, :, 0]
    return np.ascontiguousarray(frame[:, :, ::-1])


def atomic_write(path: Path, data: bytes, overwrite: bool) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then move it into place."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; give a file name to write to")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; pass overwrite=True to replace it")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"{path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_exclusive(tmp, path)
        _fsync_folder(folder)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _link_exclusive(tmp: str, path: Path) -> None:
    """Move ``tmp`` to ``path`` without replacing a file that appeared meanwhile."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path}: already exists; pass overwrite=True to replace it") from None
    except OSError:
        # Filesystems without hard links: fall back to a checked rename.
        if path.exists():
            raise FileExistsError(f"{path}: already exists; pass overwrite=True to replace it") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _dataset_for(image: Image):
    """A fresh data set for ``image``: a copy of its source's without pixel elements, or a new SC one."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    src = image.dataset
    if src is None:
        ds = _secondary_capture(image)
    else:
        drop = set(_PIXEL_DATA_TAGS)
        if image.photometric == "RGB" and str(src.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR":
            drop |= _PALETTE_TAGS
        ds = Dataset()
        for elem in src:
            if int(elem.tag) not in drop and elem.tag.group != 0x0002:
                ds.add(copy.deepcopy(elem))
        if "SOPClassUID" not in ds:
            ds.SOPClassUID = _sc_sop_class(image)
    ds.SOPInstanceUID = generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    return ds


def _sc_sop_class(image: Image):
    from pydicom import uid

    if image.frames == 1:
        return uid.SecondaryCaptureImageStorage
    if image.samples == 3:
        return uid.MultiFrameTrueColorSecondaryCaptureImageStorage
    if image.pixels.dtype.itemsize == 1:
        return uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage
    return uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage


def _secondary_capture(image: Image):
    """A minimal valid Secondary Capture data set (new patient-less study and series)."""
    import datetime

    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    now = datetime.datetime.now()
    ds = Dataset()
    ds.SOPClassUID = _sc_sop_class(image)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyDate = ds.ContentDate
    ds.StudyTime = ds.ContentTime
    ds.Modality = (image.modality or "OT")[:16]
    ds.ConversionType = "WSD"
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    if image.source:
        ds.DerivationDescription = f"Converted from {Path(image.source).name}"[:1024]
    if image.samples == 1 and (image.rescale_slope != 1.0 or image.rescale_intercept != 0.0):
        ds.RescaleSlope = _ds_str(image.rescale_slope)
        ds.RescaleIntercept = _ds_str(image.rescale_intercept)
        ds.RescaleType = "US"
    return ds


def _ds_str(value: float) -> str:
    """A float as a DICOM DS string (at most 16 characters)."""
    text = repr(float(value))
    if text.endswith(".0"):
        text = text[:-2]
    return text if len(text) <= 16 else f"{value:.10g}"


def _set_pixels(ds, image: Image) -> None:
    """Pixel data and the group 0028 elements that describe it."""
    pixels = image.pixels
    bits_allocated = 8 * pixels.dtype.itemsize
    if image.samples == 3 and image.photometric != "RGB":
        raise ValueError(f"a 3-sample image must be RGB, got photometric {image.photometric!r}")
    if image.samples == 1 and image.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"a 1-sample image must be MONOCHROME1/2, got photometric {image.photometric!r}")
    bits_stored = min(image.bits_stored, bits_allocated)

    ds.SamplesPerPixel = image.samples
    ds.PhotometricInterpretation = image.photometric
    ds.Rows = image.rows
    ds.Columns = image.cols
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if image.signed else 0
    if image.samples > 1:
        ds.PlanarConfiguration = 0
    elif "PlanarConfiguration" in ds:
        del ds.PlanarConfiguration
    if image.frames > 1 or "NumberOfFrames" in ds:
        ds.NumberOfFrames = image.frames
    data = np.ascontiguousarray(pixels.astype(pixels.dtype.newbyteorder("<"), copy=False)).tobytes()
    if len(data) % 2:
        data += b"\x00"
    ds.PixelData = data
    ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"


def _mark_lossy(ds, ratio: float, method: str) -> None:
    """Record one more lossy step, appending to the history a lossy source already carries."""
    was_lossy = str(ds.get("LossyImageCompression", "")).strip() == "01"
    ratios = list(_as_list(ds.get("LossyImageCompressionRatio"))) if was_lossy else []
    methods = list(_as_list(ds.get("LossyImageCompressionMethod"))) if was_lossy else []
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [_ds_str(float(r)) for r in ratios] + [_ds_str(round(float(ratio), 4))]
    ds.LossyImageCompressionMethod = [str(m) for m in methods] + [method]


def _as_list(value):
    if value is None or value == "":
        return []
    if isinstance(value, (str, bytes, int, float)):
        return [value]
    return list(value)
