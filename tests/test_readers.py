"""Reading DICOM, PNG and TIFF into Image: transfer syntaxes, pixel formats, bad input."""
from __future__ import annotations

import shutil
import sys
import types

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_color_lut
from pydicom.uid import UID

from data import Image, InvalidImageError, list_images, read_image, write_png
from data.corpus import PYDICOM, PYDICOM_DATA, package_dir


def sample(name: str):
    """Path of a file shipped in pydicom or pydicom-data."""
    for package in (PYDICOM, PYDICOM_DATA):
        path = package_dir(package) / name
        if path.is_file():
            return path
    raise FileNotFoundError(name)


TRANSFER_SYNTAXES = [
    ("CT_small.dcm", "1.2.840.10008.1.2.1"),  # Explicit VR Little Endian
    ("MR_small_implicit.dcm", "1.2.840.10008.1.2"),  # Implicit VR Little Endian
    ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),  # Explicit VR Big Endian
    ("image_dfl.dcm", "1.2.840.10008.1.2.1.99"),  # Deflated
    ("SC_rgb_rle.dcm", "1.2.840.10008.1.2.5"),  # RLE
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),
    ("JPEG-LL.dcm", "1.2.840.10008.1.2.4.70"),  # JPEG lossless SV1
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "1.2.840.10008.1.2.4.70"),
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),  # JPEG baseline
    ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51"),  # JPEG extended
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),  # JPEG-LS lossless
    ("JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81"),  # JPEG-LS near-lossless
    ("emri_small_jpeg_2k_lossless.dcm", "1.2.840.10008.1.2.4.90"),  # JPEG 2000 lossless
    ("explicit_VR-UN.dcm", "1.2.840.10008.1.2.4.90"),
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),  # JPEG 2000
]


@pytest.mark.parametrize("name, uid", TRANSFER_SYNTAXES)
def test_every_transfer_syntax_decodes(name, uid):
    image = read_image(sample(name))
    assert image.dataset.file_meta.TransferSyntaxUID == uid
    assert image.pixels.ndim == 4 and image.pixels.size > 0
    assert image.pixels.dtype in (np.uint8, np.uint16, np.int8, np.int16)
    assert image.pixels.dtype.isnative


TWINS = [
    ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
    ("MR_small.dcm", "MR_small_RLE.dcm"),
    ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
    ("MR_small.dcm", "MR_small_implicit.dcm"),
    ("MR_small.dcm", "MR_small_bigendian.dcm"),
    ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm"),
    ("emri_small.dcm", "emri_small_jpeg_ls_lossless.dcm"),
    ("emri_small.dcm", "emri_small_RLE.dcm"),
    ("emri_small.dcm", "emri_small_big_endian.dcm"),
    ("SC_rgb.dcm", "SC_rgb_rle.dcm"),
    ("SC_rgb.dcm", "SC_rgb_jpeg_gdcm.dcm"),
    ("SC_rgb_16bit.dcm", "SC_rgb_rle_16bit.dcm"),
    ("SC_rgb_2frame.dcm", "SC_rgb_rle_2frame.dcm"),
    ("693_UNCR.dcm", "693_J2KR.dcm"),
    ("US1_UNCR.dcm", "US1_J2KR.dcm"),
    ("OBXXXX1A.dcm", "OBXXXX1A_rle.dcm"),
    ("gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm"),
]


@pytest.mark.parametrize("plain, coded", TWINS)
def test_lossless_variants_equal_their_uncompressed_twin(plain, coded):
    a, b = read_image(sample(plain)), read_image(sample(coded))
    assert a.pixels.dtype == b.pixels.dtype
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert (a.photometric, a.signed) == (b.photometric, b.signed)


@pytest.mark.parametrize("name, dtype, signed, bits", [
    ("CT_small.dcm", np.int16, True, 16),
    ("693_UNCR.dcm", np.int16, True, 14),
    ("mlut_18.dcm", np.int16, True, 12),
    ("MR2_UNCR.dcm", np.uint16, False, 12),
    ("vlut_04.dcm", np.uint8, False, 8),
    ("image_dfl.dcm", np.uint8, False, 8),
])
def test_signedness_and_dtype(name, dtype, signed, bits):
    image = read_image(sample(name))
    assert image.pixels.dtype == dtype
    assert (image.signed, image.bits_stored) == (signed, bits)
    low, high = image.value_range
    assert low <= image.pixels.min() and image.pixels.max() <= high


def test_signed_pixels_sign_extended():
    image = read_image(sample("693_UNCR.dcm"))
    assert image.pixels.min() < 0


def test_rescale_and_modality_recorded_not_applied():
    image = read_image(sample("CT_small.dcm"))
    assert (image.rescale_slope, image.rescale_intercept, image.modality) == (1.0, -1024.0, "CT")
    np.testing.assert_array_equal(image.pixels[0, :, :, 0], image.dataset.pixel_array)
    assert image.source.endswith("CT_small.dcm")


def test_monochrome1_is_kept_not_inverted():
    image = read_image(sample("RG3_UNCR.dcm"))
    assert image.photometric == "MONOCHROME1"
    raw = pydicom.dcmread(sample("RG3_UNCR.dcm")).pixel_array
    np.testing.assert_array_equal(image.pixels[0, :, :, 0], raw)


def test_multi_frame_shape_and_frame_selection():
    image = read_image(sample("emri_small.dcm"))
    assert image.pixels.shape == (10, 64, 64, 1)
    one = read_image(sample("emri_small.dcm"), frame=3)
    assert one.pixels.shape == (1, 64, 64, 1)
    np.testing.assert_array_equal(one.pixels, image.pixels[3:4])
    rgb = read_image(sample("SC_rgb_rle_2frame.dcm"))
    assert rgb.pixels.shape == (2, 100, 100, 3) and rgb.photometric == "RGB"


def test_frame_out_of_range():
    with pytest.raises(InvalidImageError, match="emri_small.dcm.*frame 10"):
        read_image(sample("emri_small.dcm"), frame=10)


@pytest.mark.parametrize("name, divisor", [("examples_palette.dcm", 256), ("gdcm-US-ALOKA-16.dcm", 257)])
def test_palette_expanded_to_rgb(name, divisor):
    """16-bit tables of 8-bit colours (c x 256: the high byte, or c x 257) come as 8-bit RGB: what they display."""
    image = read_image(sample(name))
    ds = pydicom.dcmread(sample(name))
    assert ds.PhotometricInterpretation == "PALETTE COLOR" and ds.RedPaletteColorLookupTableDescriptor[2] == 16
    assert image.photometric == "RGB" and image.samples == 3 and not image.signed
    assert image.bits_stored == 8 and image.pixels.dtype == np.uint8
    np.testing.assert_array_equal(image.pixels[0].astype(np.int64) * divisor, apply_color_lut(ds.pixel_array, ds))


def test_palette_of_16_bit_colours_and_indices():
    """A table that is not 8-bit colours scaled to 16 bits stays 16-bit RGB; palette="indices" keeps the indices."""
    ds = pydicom.dcmread(sample("OBXXXX1A_expb.dcm"))
    image = read_image(sample("OBXXXX1A_expb.dcm"))
    assert image.bits_stored == 16 and image.pixels.dtype == np.uint16
    np.testing.assert_array_equal(image.pixels[0], apply_color_lut(ds.pixel_array, ds))
    indices = read_image(sample("OBXXXX1A_expb.dcm"), palette="indices")
    assert (indices.photometric, indices.samples, indices.bits_stored) == ("PALETTE COLOR", 1, 8)
    np.testing.assert_array_equal(indices.pixels[0, :, :, 0], ds.pixel_array)
    with pytest.raises(ValueError, match="palette"):
        read_image(sample("OBXXXX1A_expb.dcm"), palette="lut")


def test_palette_multi_frame():
    image = read_image(sample("OBXXXX1A_rle_2frame.dcm"))
    assert image.pixels.shape == (2, 600, 800, 3)


def test_ybr_converted_to_rgb_once():
    reference = read_image(sample("SC_rgb.dcm")).pixels.astype(int)
    for name in ("SC_ybr_full_uncompressed.dcm",  # uncompressed YBR_FULL
                 "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG YBR_FULL_422, colour-converted by the decoder
                 "SC_rgb_dcmtk_+eb+cy+n1.dcm"):  # JPEG YBR_FULL
        image = read_image(sample(name))
        assert image.photometric == "RGB"
        # Lossy JPEG error is a few levels; a missing or doubled conversion is tens.
        assert np.abs(image.pixels.astype(int) - reference).mean() < 5, name


def test_ybr_multi_frame_jpeg():
    image = read_image(sample("examples_ybr_color.dcm"), frame=0)
    assert image.photometric == "RGB" and image.pixels.shape == (1, 240, 320, 3)


def test_dispatch_on_content_not_extension(tmp_path):
    dicom_named_png = tmp_path / "really_dicom.png"
    shutil.copy(sample("MR_small.dcm"), dicom_named_png)
    np.testing.assert_array_equal(read_image(dicom_named_png).pixels, read_image(sample("MR_small.dcm")).pixels)

    gray = Image(pixels=np.arange(12, dtype=np.uint8).reshape(1, 3, 4, 1), bits_stored=8, signed=False)
    write_png(tmp_path / "a.png", gray)
    png_named_dcm = tmp_path / "really_png.dcm"
    shutil.copy(tmp_path / "a.png", png_named_dcm)
    np.testing.assert_array_equal(read_image(png_named_dcm).pixels, gray.pixels)


def test_dicom_without_meta_header_that_parses_is_read():
    image = read_image(sample("OT-PAL-8-face.dcm"))
    assert image.photometric == "RGB" and image.pixels.shape == (1, 480, 640, 3)


def test_list_images(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    shutil.copy(sample("MR_small.dcm"), tmp_path / "sub" / "b.dcm")
    shutil.copy(sample("MR_small.dcm"), tmp_path / "sub" / "deeper" / "IM0001")
    (tmp_path / "a.PNG").write_bytes(b"")
    (tmp_path / "c.tif").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "README").write_text("not dicom")
    (tmp_path / ".secret.dcm").write_bytes(b"")
    shutil.copy(sample("MR_small.dcm"), tmp_path / ".hidden" / "x.dcm")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a.PNG", "c.tif", "sub/b.dcm", "sub/deeper/IM0001"]


# --------------------------------------------------------------------------- bad input

def _problem(path, **kwargs) -> str:
    with pytest.raises(InvalidImageError) as info:
        read_image(path, **kwargs)
    message = str(info.value)
    assert str(path) in message and info.value.path == str(path)
    return message


def test_missing_file(tmp_path):
    assert "no such file" in _problem(tmp_path / "nope.dcm")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    assert "empty" in _problem(path)


def test_directory(tmp_path):
    assert "list_images" in _problem(tmp_path)


def test_png_that_is_text(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("this is not an image at all\n")
    message = _problem(path)
    assert "named .png" in message and "text" in message


def test_truncated_png(tmp_path):
    gray = Image(pixels=np.arange(4096, dtype=np.uint16).reshape(1, 64, 64, 1), bits_stored=16, signed=False)
    write_png(tmp_path / "whole.png", gray)
    cut = tmp_path / "cut.png"
    cut.write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    assert "PNG" in _problem(cut)


@pytest.mark.parametrize("name, expected", [
    ("no_meta.dcm", "does not parse as a DICOM data set"),
    ("MR_truncated.dcm", "truncated"),
    ("emri_small_jpeg_2k_lossless_too_short.dcm", "truncated"),
    ("badVR.dcm", "NumberOfFrames has an invalid value '1A'"),
    ("rtplan.dcm", "no Pixel Data"),
    ("rtplan_truncated.dcm", "no Pixel Data"),
    ("waveform_ecg.dcm", "no Pixel Data"),
    ("meta_missing_tsyntax.dcm", "Rows is missing"),
    ("rtdose.dcm", "32-bit"),
    ("JPEG-lossy.dcm", "cannot decode"),
])
def test_broken_dicom_files(name, expected):
    assert expected in _problem(sample(name))


def test_unsupported_transfer_syntax(tmp_path):
    ds = pydicom.dcmread(sample("MR_small_jpeg_ls_lossless.dcm"))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2: pydicom has no decoder
    path = tmp_path / "mpeg2.dcm"
    ds.save_as(path, enforce_file_format=True)
    message = _problem(path)
    assert "MPEG2" in message and "no pydicom decoder" in message


def test_missing_plugin(tmp_path, monkeypatch):
    fake = types.SimpleNamespace(is_available=False, missing_dependencies=["pylibjpeg-openjpeg>=2.0"])
    monkeypatch.setattr(sys.modules["pydicom.pixels"], "get_decoder", lambda uid: fake)
    message = _problem(sample("emri_small_jpeg_2k_lossless.dcm"))
    assert "no plugin installed" in message and "pylibjpeg-openjpeg" in message


def test_size_limit_from_header(tmp_path):
    assert "over the limit" in _problem(sample("CT_small.dcm"), max_bytes=1000)
    ds = pydicom.dcmread(sample("MR_small.dcm"))
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 1000  # 8 TB claimed, 8 kB present: refused before any allocation
    path = tmp_path / "huge.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert "over the limit" in _problem(path)
    one_frame = _problem(path, frame=0)
    assert "over the limit" in one_frame and "1 frames" in one_frame


def test_size_limit_png_tiff(tmp_path):
    from data import write_tiff

    gray = Image(pixels=np.zeros((2, 40, 50, 1), np.uint16), bits_stored=16, signed=False)
    write_png(tmp_path / "a.png", gray)
    write_tiff(tmp_path / "a.tif", gray)
    assert "over the limit" in _problem(tmp_path / "a.png", max_bytes=3999)
    assert read_image(tmp_path / "a.png", max_bytes=4000).pixels.shape == (1, 40, 50, 1)
    assert "over the limit" in _problem(tmp_path / "a.tif", max_bytes=7999)
    assert read_image(tmp_path / "a.tif", frame=1, max_bytes=4000).pixels.shape == (1, 40, 50, 1)


def test_photometric_that_contradicts_samples(tmp_path):
    ds = pydicom.dcmread(sample("MR_small.dcm"))
    ds.PhotometricInterpretation = "RGB"
    path = tmp_path / "liar.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert "does not match SamplesPerPixel 1" in _problem(path)


def test_image_io_imports_no_tensorflow():
    import subprocess

    code = "import sys, data, data.readers, data.writers, data.corpus; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
