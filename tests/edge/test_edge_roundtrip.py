"""Edge runtime round trips through files: DICOM/PNG/TIFF -> .kcd -> DICOM/PNG/TIFF, info, verify, kernels."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest

from data.readers import read_image
from edge_runtime import runtime
from edge_runtime.codec import nominal_psnr


def _psnr(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    mse = np.mean((a - b) ** 2)
    return np.inf if mse == 0 else 10 * np.log10((a.max() - a.min()) ** 2 / mse)


@pytest.mark.parametrize("name", ["synthetic_dcm", "ct_dcm"])
def test_dicom_round_trip_keeps_identity_and_marks_lossy(name, request, codec, tmp_path):
    src = request.getfixturevalue(name)
    kcd, out = tmp_path / "a.kcd", tmp_path / "a.dcm"
    enc = runtime.encode_file(src, kcd, quality=8, bundle=codec)
    assert enc["has_metadata"] and kcd.stat().st_size == enc["bytes"]
    runtime.decode_file(kcd, out, bundle=codec)

    a, b = pydicom.dcmread(src), pydicom.dcmread(out)
    for kw in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "Modality",
               "Rows", "Columns", "BitsStored", "PixelRepresentation", "PhotometricInterpretation"):
        assert b.get(kw) == a.get(kw), kw
    assert b.SOPInstanceUID != a.SOPInstanceUID
    assert b.file_meta.MediaStorageSOPInstanceUID == b.SOPInstanceUID
    assert b.LossyImageCompression == "01"
    assert b.LossyImageCompressionMethod == "KERAS_CODEC"
    assert float(b.LossyImageCompressionRatio) == pytest.approx(enc["ratio"], rel=1e-3)
    assert float(b.LossyImageCompressionRatio) > 1.5

    orig, dec = read_image(src).pixels, read_image(out).pixels
    assert dec.dtype == orig.dtype and dec.shape == orig.shape
    assert _psnr(orig, dec) > nominal_psnr(8) - 6  # a real reconstruction, not garbage


def test_png_and_tiff_outputs(synthetic_dcm, codec, tmp_path):
    kcd = tmp_path / "s.kcd"
    runtime.encode_file(synthetic_dcm, kcd, quality=12, bundle=codec)
    png, tif = tmp_path / "s.png", tmp_path / "s.tif"
    runtime.decode_file(kcd, png, bundle=codec)
    runtime.decode_file(kcd, tif, bundle=codec)
    p, t = read_image(png).pixels, read_image(tif).pixels
    np.testing.assert_array_equal(p, t)
    orig = read_image(synthetic_dcm).pixels
    assert p.dtype == np.uint16 and p.max() <= 4095
    assert _psnr(orig, p) > nominal_psnr(12) - 6
    # A PNG input has no DICOM header: no metadata block, and a DICOM decode is a new Secondary Capture.
    kcd2 = tmp_path / "from_png.kcd"
    assert not runtime.encode_file(png, kcd2, bundle=codec)["has_metadata"]
    runtime.decode_file(kcd2, tmp_path / "sc.dcm", bundle=codec)
    ds = pydicom.dcmread(tmp_path / "sc.dcm")
    assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage and ds.LossyImageCompression == "01"


def test_info_and_verify(ct_dcm, codec, bundle_path, tmp_path):
    kcd = tmp_path / "ct.kcd"
    runtime.encode_file(ct_dcm, kcd, quality=5, bundle=codec)
    d = runtime.info(kcd, bundle_path=bundle_path)
    assert (d["rows"], d["cols"], d["frames"], d["samples"]) == (128, 128, 1, 1)
    assert (d["dtype"], d["bits_stored"], d["signed"], d["photometric"]) == ("int16", 16, True, "MONOCHROME2")
    assert d["model_id"] == codec[0].model_id.hex() and d["model_known"] is True
    assert d["quality"] == 5 and d["mode"] == "lossy" and d["max_error"] == -1
    assert d["bytes"] == kcd.stat().st_size and d["has_metadata"] and d["metadata_bytes"] > 1000
    assert d["pixel_bytes"] < d["bytes"]
    assert d["bpp"] == pytest.approx(8 * d["pixel_bytes"] / (128 * 128))
    v = runtime.verify(kcd, bundle=codec)
    assert v["ok"] and v["crc"] == "ok" and v["decoded"] == [1, 128, 128, 1]


def test_xnnpack_and_reference_kernels_decode_identically(synthetic_dcm, ct_dcm, codec, bundle_path, tmp_path):
    ref = runtime.load_codec(bundle_path, kernels="reference")
    for i, src in enumerate((synthetic_dcm, ct_dcm)):
        kcd = tmp_path / f"{i}.kcd"
        runtime.encode_file(src, kcd, quality=9, bundle=codec)
        a, b = tmp_path / f"{i}x.tif", tmp_path / f"{i}r.tif"
        runtime.decode_file(kcd, a, bundle=codec)
        runtime.decode_file(kcd, b, bundle=ref)
        np.testing.assert_array_equal(read_image(a).pixels, read_image(b).pixels)
        # and both kernels write the same stream
        kcd_ref = tmp_path / f"{i}r.kcd"
        runtime.encode_file(src, kcd_ref, quality=9, bundle=ref)
        assert kcd_ref.read_bytes() == kcd.read_bytes()


def test_dynamic_shape_graph_resizes_per_plane(codec):
    """The Haar signatures have dynamic H x W: one runner serves every plane size."""
    t = codec[1].transforms["haar"]
    rng = np.random.default_rng(3)
    for shape in ((16, 24), (64, 40), (32, 32)):
        x = rng.random(shape).astype(np.float32)
        bands = t.analysis(x, 2)
        assert bands[0].shape == (shape[0] // 4, shape[1] // 4)
        assert [trio[0].shape for trio in bands[1:]] == [(shape[0] // 4, shape[1] // 4), (shape[0] // 2, shape[1] // 2)]
        np.testing.assert_allclose(t.synthesis(bands, 2, step=0.01), x, atol=1e-5)


def test_bundle_without_tflite_says_to_export(bundle_path, tmp_path):
    import shutil

    from edge_runtime.tflite_runner import MissingTFLiteError

    for name in ("manifest.json", "context.npz", "tables.npz"):
        shutil.copy(bundle_path / name, tmp_path / name)
    with pytest.raises(MissingTFLiteError, match="export"):
        runtime.load_codec(tmp_path)
