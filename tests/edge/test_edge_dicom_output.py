"""What a decoded DICOM says about itself: derivation, lossy history, pixel range, UIDs, identity.

tests/test_dicom_conformance.py runs dciodvfy over real inputs; these are the exact checks, without it.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from data.image import Image
from data.readers import read_image
from data import writers
from data.writers import write_dicom
from edge_runtime import bitstream as bs
from edge_runtime import runtime


@pytest.fixture(scope="module")
def shipped():
    """The shipped bundle (the test bundle's graphs cover only the shapes of the edge tests' own images)."""
    return runtime.load_codec(None)


def _testdata(name: str) -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file(name))


def _values(value):
    if value is None or value == "":
        return []
    return [value] if isinstance(value, (str, float, int)) else list(value)


def _round_trip(src, codec, tmp_path, **mode):
    kcd, out = tmp_path / "x.kcd", tmp_path / "x.dcm"
    runtime.encode_file(src, kcd, bundle=codec, jobs=1, **mode)
    runtime.decode_file(kcd, out, bundle=codec, jobs=1)
    return pydicom.dcmread(out)


def test_lossy_output_is_derived_from_the_original(ct_dcm, shipped, tmp_path):
    """Item 1: Image Type DERIVED, a derivation description with method and ratio, the DCM code for lossy
    compression and the original SOP Instance as the source (PS3.3 C.7.6.1.1.5)."""
    src = pydicom.dcmread(ct_dcm)
    ds = _round_trip(ct_dcm, shipped, tmp_path, quality=9)
    assert list(ds.ImageType) == ["DERIVED"] + list(src.ImageType)[1:]
    ratio = float(_values(ds.LossyImageCompressionRatio)[-1])
    assert "KERAS_CODEC" in ds.DerivationDescription and "quality 9" in ds.DerivationDescription
    assert f"{ratio:.2f}:1" in ds.DerivationDescription
    code = ds.DerivationCodeSequence[-1]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("113040", "DCM", "Lossy Compression")
    ref = ds.SourceImageSequence[-1]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (src.SOPClassUID, src.SOPInstanceUID)
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121320"
    assert ds.SOPInstanceUID != src.SOPInstanceUID

    (tmp_path / "b").mkdir()
    bounded = _round_trip(ct_dcm, shipped, tmp_path / "b", max_error=2)
    assert bounded.ImageType[0] == "DERIVED" and "within 2 of the original" in bounded.DerivationDescription
    (tmp_path / "c").mkdir()
    lossless = _round_trip(ct_dcm, shipped, tmp_path / "c", max_error=0)
    assert list(lossless.ImageType) == list(src.ImageType) and "DerivationDescription" not in lossless


def test_enhanced_ct_derivation_lives_in_the_functional_groups(tmp_path):
    """Item 1 for an enhanced multi-frame object: every Frame Type DERIVED, a Derivation Image Sequence in
    the shared groups, the source listed in the Source Image Evidence Sequence; nothing at the top level."""
    from data.corpus import PYDICOM_DATA, package_dir

    image = read_image(package_dir(PYDICOM_DATA) / "eCT_Supplemental.dcm")
    src = image.dataset
    ds = pydicom.dcmread(write_dicom(tmp_path / "e.dcm", image, lossy=True, ratio=7.5))
    assert ds.ImageType[0] == "DERIVED" and "DerivationDescription" not in ds and "SourceImageSequence" not in ds
    frame_types = [item.FrameType for group in list(ds.SharedFunctionalGroupsSequence)
                   + list(ds.PerFrameFunctionalGroupsSequence) for elem in group if elem.VR == "SQ"
                   for item in elem.value if "FrameType" in item]
    assert frame_types and all(f[0] == "DERIVED" for f in frame_types)
    derivation = ds.SharedFunctionalGroupsSequence[0].DerivationImageSequence[-1]
    assert "7.5:1" in derivation.DerivationDescription
    assert derivation.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    evidence = ds.SourceImageEvidenceSequence[-1]
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID


@pytest.mark.parametrize("mode", [{"max_error": 0}, {"quality": 12}])
def test_a_source_in_a_lossy_transfer_syntax_stays_lossy(mode, shipped, tmp_path):
    """Item 2: JPEG-LS near-lossless (1.2.840.10008.1.2.4.81, NEAR > 0) without (0028,2110): even a lossless
    decode says 01, with the step's method and the source's ratio."""
    src = _testdata("JPEGLSNearLossless_08.dcm")
    assert "LossyImageCompression" not in pydicom.dcmread(src)
    ds = _round_trip(src, shipped, tmp_path, **mode)
    assert ds.LossyImageCompression == "01"
    methods = [str(m) for m in _values(ds.LossyImageCompressionMethod)]
    ratios = [float(r) for r in _values(ds.LossyImageCompressionRatio)]
    assert methods[0] == "ISO_14495_1" and ratios[0] > 1
    assert methods == (["ISO_14495_1"] if "max_error" in mode else ["ISO_14495_1", "KERAS_CODEC"])


def test_jpeg_baseline_source_without_2110_is_lossy(tmp_path):
    """Item 2: a JPEG baseline (…4.50) source whose header lost (0028,2110) is marked lossy on a lossless write."""
    ds = pydicom.dcmread(_testdata("SC_rgb_jpeg_dcmtk.dcm"))
    for kw in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        del ds[kw]
    path = tmp_path / "jpeg.dcm"
    ds.save_as(path)
    out = pydicom.dcmread(write_dicom(tmp_path / "o.dcm", read_image(path), mark_lossless=True))
    assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod == "ISO_10918_1"
    # ... and a lossless JPEG (…4.70) source may still be called never lossy
    lossless = read_image(_testdata("SC_rgb_jpeg_gdcm.dcm"))
    assert pydicom.dcmread(write_dicom(tmp_path / "l.dcm", lossless, mark_lossless=True)).LossyImageCompression == "00"


def test_ratio_and_method_histories_stay_aligned(shipped, tmp_path):
    """Item 3: 693_J2KI has a ratio but no method; the JPEG 2000 step's method fills it, so the old ratio
    never lines up with our method. Without a transfer syntax to tell, the gap is an empty value."""
    src = _testdata("693_J2KI.dcm")
    ds = _round_trip(src, shipped, tmp_path, quality=17)
    ratios, methods = _values(ds.LossyImageCompressionRatio), _values(ds.LossyImageCompressionMethod)
    assert [str(m) for m in methods] == ["ISO_15444_1", "KERAS_CODEC"]
    assert len(ratios) == 2 and float(ratios[0]) == pytest.approx(338.687, rel=1e-4)

    image = read_image(_testdata("CT_small.dcm"))
    image.dataset.LossyImageCompression = "01"
    image.dataset.LossyImageCompressionRatio = ["20", "8"]
    image.dataset.LossyImageCompressionMethod = "ISO_10918_1"
    out = pydicom.dcmread(write_dicom(tmp_path / "a.dcm", image, lossy=True, ratio=3))
    assert [str(m) for m in out.LossyImageCompressionMethod] == ["", "ISO_10918_1", "KERAS_CODEC"]
    assert [str(r) for r in out.LossyImageCompressionRatio] == ["20", "8", "3"]


def test_pixel_range_recomputed_and_uids_are_ours(shipped, tmp_path):
    """Item 5: Smallest/Largest Image Pixel Value follow the decoded pixels; a series range they leave is
    dropped; UIDs and the implementation are keras_codec's, not pydicom's."""
    src = _testdata("MR_small.dcm")
    assert "SmallestImagePixelValue" in pydicom.dcmread(src)
    ds = _round_trip(src, shipped, tmp_path, quality=4)
    px = read_image(tmp_path / "x.dcm").pixels
    assert (ds.SmallestImagePixelValue, ds.LargestImagePixelValue) == (int(px.min()), int(px.max()))
    assert ds.file_meta.ImplementationClassUID == writers.IMPLEMENTATION_CLASS_UID
    assert ds.file_meta.ImplementationVersionName.startswith("KCODEC_")
    assert ds.SOPInstanceUID.startswith("2.25.") and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID

    image = read_image(src)
    image.dataset.SmallestPixelValueInSeries, image.dataset.LargestPixelValueInSeries = 0, 10
    out = pydicom.dcmread(write_dicom(tmp_path / "s.dcm", image))
    assert "SmallestPixelValueInSeries" not in out and "LargestPixelValueInSeries" not in out
    image.dataset.LargestPixelValueInSeries = 30000
    out = pydicom.dcmread(write_dicom(tmp_path / "t.dcm", image))
    assert (out.SmallestPixelValueInSeries, out.LargestPixelValueInSeries) == (0, 30000)


def test_metadata_block_that_is_not_dicom_is_refused(synthetic_dcm, codec, tmp_path):
    """Item 10: a stream whose metadata block is not a DICOM data set does not decode to a DICOM without
    identity (and prints no pydicom warnings); PNG/TIFF still work."""
    good = tmp_path / "good.kcd"
    runtime.encode_file(synthetic_dcm, good, bundle=codec, quality=10)
    header, tiles, _ = bs.parse(good.read_bytes())
    bad = tmp_path / "bad.kcd"
    bad.write_bytes(bs.pack(header, tiles, b"hello, this is not a DICOM header at all" * 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(bs.InvalidBitstreamError, match="metadata block is not a DICOM data set.*png"):
            runtime.decode_file(bad, tmp_path / "bad.dcm", bundle=codec)
    assert not (tmp_path / "bad.dcm").exists()
    runtime.decode_file(bad, tmp_path / "bad.png", bundle=codec)


def test_secondary_capture_uids_are_uuid_derived(tmp_path):
    pixels = np.arange(64, dtype=np.uint16).reshape(1, 8, 8, 1)
    ds = pydicom.dcmread(write_dicom(tmp_path / "sc.dcm", Image(pixels=pixels, bits_stored=12, signed=False)))
    for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID):
        assert uid.startswith("2.25.")
    assert pydicom.dcmread(io.BytesIO((tmp_path / "sc.dcm").read_bytes())).file_meta.ImplementationClassUID == \
        writers.IMPLEMENTATION_CLASS_UID
