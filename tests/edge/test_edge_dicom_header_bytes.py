"""DICOM outputs written from a stream's header bytes (data.dicom_bytes) are the files write_dicom writes.

A decode to .dcm copies the header a stream carries without pydicom where data.dicom_bytes can; every
check here compares its bytes with data.writers.write_dicom's on the parsed header (the same new UID).
"""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from data import dicom_bytes, writers
from data.corpus import PYDICOM_DATA, corpus_path
from data.image import Image
from data.readers import read_image
from edge_runtime import runtime

UID = "2.25.301234567890123456789012345678901234567"
LOSSY = {"lossy": True, "ratio": 12.3456, "method": "KERAS_CODEC",
         "derivation": "Lossy compression with keras_codec (KERAS_CODEC), quality 17, compression ratio 12.35:1"}
LOSSLESS = {"mark_lossless": True}

# (file, package): single and multi-frame, grey and RGB, signed, with a lossy history, earlier derivation
# sequences of defined and undefined length, a pixel range, private and UN elements
HANDLED = [("explicit_VR-UN.dcm", PYDICOM_DATA), ("CT_small.dcm", "pydicom"), ("MR_small.dcm", "pydicom"),
           ("RG1_UNCI.dcm", PYDICOM_DATA), ("US1_J2KR.dcm", PYDICOM_DATA), ("693_UNCI.dcm", PYDICOM_DATA),
           ("SC_rgb_2frame.dcm", PYDICOM_DATA), ("JPEG2000_UNC.dcm", PYDICOM_DATA), ("bad_sequence.dcm", PYDICOM_DATA),
           ("SC_rgb_small_odd.dcm", "pydicom"), ("color-pl.dcm", PYDICOM_DATA), ("MR_small_bigendian.dcm", "pydicom")]
# enhanced MR (functional groups), a segmentation, palette colour: left to write_dicom
LEFT = [("emri_small.dcm", PYDICOM_DATA), ("liver.dcm", PYDICOM_DATA), ("OBXXXX1A.dcm", PYDICOM_DATA)]


def _path(name: str, package: str) -> Path:
    if package == "pydicom":
        from pydicom.data import get_testdata_file

        return Path(get_testdata_file(name))
    return corpus_path(name, package)


def _header_and_image(name: str, package: str):
    """The metadata block a stream of this file carries, and the image with the data set a decode parses."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = read_image(_path(name, package))
        header = runtime.dicom_metadata(image.dataset)
        image.dataset = runtime._dataset_from_metadata(header, name)
    return header, image


def _both(header: bytes, image, tmp_path, monkeypatch, **how):
    """(write_dicom's file, dicom_bytes' file or None), with the same new SOP Instance UID."""
    monkeypatch.setattr(writers, "_new_uid", lambda: UID)
    out = tmp_path / "ref.dcm"
    writers.write_dicom(out, image, overwrite=True, **how)
    fast = dicom_bytes.file_bytes(header, image, uid=UID, class_uid=writers.IMPLEMENTATION_CLASS_UID,
                                  version_name=writers.implementation_version_name(),
                                  method=how.get("method"), **{k: v for k, v in how.items() if k != "method"})
    return out.read_bytes(), fast


@pytest.mark.parametrize("name,package", HANDLED)
@pytest.mark.parametrize("how", [LOSSY, LOSSLESS], ids=["lossy", "lossless"])
def test_same_file_as_write_dicom(name, package, how, tmp_path, monkeypatch):
    header, image = _header_and_image(name, package)
    ref, fast = _both(header, image, tmp_path, monkeypatch, **how)
    assert fast is not None, f"{name}: left to write_dicom"
    assert fast == ref


@pytest.mark.parametrize("name,package", LEFT)
def test_left_to_write_dicom(name, package, tmp_path, monkeypatch):
    header, image = _header_and_image(name, package)
    ref, fast = _both(header, image, tmp_path, monkeypatch, **LOSSY)
    assert fast is None and ref[128:132] == b"DICM"


def _variant(tmp_path, monkeypatch, edit, pixels=None, **how):
    """Both files for the CT slice's header changed by ``edit`` (a function of the pydicom data set)."""
    header, image = _header_and_image("CT_small.dcm", "pydicom")
    ds = image.dataset
    edit(ds)
    header = runtime.dicom_metadata(ds)
    image.dataset = runtime._dataset_from_metadata(header, "variant")
    if pixels is not None:
        image.pixels = pixels
    return _both(header, image, tmp_path, monkeypatch, **how)


def _series_range(low, high):
    def edit(ds):
        ds.add_new(0x00280108, "SS", low)
        ds.add_new(0x00280109, "SS", high)
    return edit


@pytest.mark.parametrize("edit", [
    _series_range(-2000, 4000),  # kept: the new pixels are inside it
    _series_range(0, 10),  # dropped: they leave it
    lambda ds: ds.add_new(0x00280106, "SS", 5),  # recomputed
    lambda ds: setattr(ds, "DerivationDescription", "Resampled \\ cropped "),  # extended
    lambda ds: delattr(ds, "ImageType"),
    lambda ds: setattr(ds, "ImageType", "ORIGINAL"),
    lambda ds: setattr(ds, "NumberOfFrames", 1),
    lambda ds: delattr(ds, "SOPInstanceUID"),  # no source to refer to
    lambda ds: (setattr(ds, "LossyImageCompression", "01"), setattr(ds, "LossyImageCompressionRatio", ["8", "2.5"]),
                setattr(ds, "LossyImageCompressionMethod", ["ISO_10918_1", "ISO_15444_1"])),
    lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"),
], ids=["series-range-kept", "series-range-dropped", "image-range", "derivation", "no-image-type",
        "one-image-type", "frames", "no-instance", "lossy-history", "monochrome1"])
@pytest.mark.parametrize("how", [LOSSY, LOSSLESS], ids=["lossy", "lossless"])
def test_variants_same_file(edit, how, tmp_path, monkeypatch):
    ref, fast = _variant(tmp_path, monkeypatch, edit, **how)
    assert fast is not None and fast == ref


@pytest.mark.parametrize("edit", [
    lambda ds: setattr(ds, "DerivationDescription", "Réduit"),  # non-ASCII text to extend
    lambda ds: (setattr(ds, "LossyImageCompression", "01"), setattr(ds, "LossyImageCompressionRatio", ["8", "2.5"]),
                setattr(ds, "LossyImageCompressionMethod", "ISO_10918_1")),  # a ratio without its method
    lambda ds: delattr(ds, "SOPClassUID"),
    lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.2.1"),  # Enhanced CT
], ids=["non-ascii", "unaligned-history", "no-class", "enhanced"])
def test_variants_left_to_write_dicom(edit, tmp_path, monkeypatch):
    assert _variant(tmp_path, monkeypatch, edit, **LOSSY)[1] is None


def test_classic_classes_keep_the_derivation_at_the_top_level():
    """data.writers puts the derivation in functional groups for the classes it names so: none of ours."""
    for uid in dicom_bytes.CLASSIC_SOP_CLASSES:
        ds = pydicom.Dataset()
        ds.SOPClassUID = uid
        assert "Storage" in ds.SOPClassUID.name and not writers._functional_group_iod(ds), uid


def test_malformed_headers_are_left_to_write_dicom():
    """Cut or corrupted header bytes never raise: they go to write_dicom, which names the problem."""
    header, image = _header_and_image("693_UNCI.dcm", PYDICOM_DATA)
    rng = np.random.default_rng(3)
    assert dicom_bytes.file_bytes(header, image, mark_lossless=True) is not None
    for n in range(1, len(header), 7):
        cut = dicom_bytes.file_bytes(header[:n], image, mark_lossless=True)
        assert cut is None or cut[128:132] == b"DICM"
    for _ in range(300):
        data = bytearray(header)
        for at in rng.integers(0, len(data), 3):
            data[at] = rng.integers(0, 256)
        out = dicom_bytes.file_bytes(bytes(data), image, **LOSSY)
        assert out is None or out[128:132] == b"DICM"
    for bad in (b"", b"\x08\x00\x18\x00UN\x00\x00\xff\xff\xff\xff", b"\x08\x00\x18\x00ui\x02\x001\x00"):
        assert dicom_bytes.file_bytes(bad, image, **LOSSY) is None
    tall = Image(pixels=np.zeros((1, 70000, 1, 1), np.int16), bits_stored=16, signed=True)  # Rows is a US
    assert dicom_bytes.file_bytes(header, tall, **LOSSY) is None


def test_new_uid_is_uuid_derived():
    uid = dicom_bytes.new_uid()
    assert uid.startswith("2.25.") and len(uid) <= 64 and uid[5:].isdigit() and uid != dicom_bytes.new_uid()


def test_decode_to_dicom_does_not_import_pydicom(ct_dcm, bundle_path, tmp_path):
    """A whole-process decode of a slice to DICOM writes its header back without importing pydicom,
    and the file parses with the source's identity."""
    kcd, out = tmp_path / "ct.kcd", tmp_path / "ct.dcm"
    runtime.encode_file(ct_dcm, kcd, bundle=bundle_path, quality=12, jobs=1)
    code = ("import sys; from edge_runtime import runtime; "
            f"runtime.decode_file({str(kcd)!r}, {str(out)!r}, bundle={str(bundle_path)!r}, jobs=1); "
            "print('pydicom' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"
    src, ds = pydicom.dcmread(ct_dcm), pydicom.dcmread(out)
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SourceImageSequence[-1].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert np.array_equal(ds.pixel_array, read_image(out).pixels[0, :, :, 0])


def test_implementation_version_is_the_installed_one():
    from importlib.metadata import version

    import edge_runtime

    assert writers.implementation_version_name() == f"KCODEC_{version('keras_codec')}"[:16]
    assert edge_runtime.__version__ == version("keras_codec")
    assert writers.implementation_version_name.__wrapped__() == f"KCODEC_{version('keras_codec')}"[:16]
