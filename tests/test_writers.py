"""Writing Image as PNG, TIFF and DICOM: bit-exact round trips, identity, lossy marks, atomicity."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from data import Image, InvalidImageError, read_image, write_dicom, write_image, write_png, write_tiff
from data.corpus import PYDICOM, PYDICOM_DATA, package_dir


def sample(name: str) -> Path:
    for package in (PYDICOM, PYDICOM_DATA):
        path = package_dir(package) / name
        if path.is_file():
            return path
    raise FileNotFoundError(name)


def random_image(dtype, samples, frames=1, rows=17, cols=23, seed=0) -> Image:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(info.min, info.max, size=(frames, rows, cols, samples), dtype=dtype, endpoint=True)
    return Image(pixels=pixels, bits_stored=8 * np.dtype(dtype).itemsize, signed=info.min < 0,
                 photometric="RGB" if samples == 3 else "MONOCHROME2")


def only_file(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- PNG / TIFF

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("samples", [1, 3])
def test_png_round_trip_bit_exact(tmp_path, dtype, samples):
    image = random_image(dtype, samples)
    write_png(tmp_path / "x.png", image)
    back = read_image(tmp_path / "x.png")
    assert back.pixels.dtype == dtype
    np.testing.assert_array_equal(back.pixels, image.pixels)
    assert (back.photometric, back.bits_stored, back.signed) == (image.photometric, image.bits_stored, False)


def test_png_writes_the_chosen_frame(tmp_path):
    image = random_image(np.uint16, 1, frames=3)
    write_png(tmp_path / "f.png", image, frame=2)
    np.testing.assert_array_equal(read_image(tmp_path / "f.png").pixels, image.pixels[2:3])
    with pytest.raises(ValueError, match="frame 3"):
        write_png(tmp_path / "g.png", image, frame=3)


def test_png_refuses_signed(tmp_path):
    with pytest.raises(InvalidImageError, match="signed.*DICOM"):
        write_png(tmp_path / "s.png", random_image(np.int16, 1))
    assert only_file(tmp_path) == []


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize("frames", [1, 3])
def test_tiff_round_trip_bit_exact(tmp_path, dtype, samples, frames):
    image = random_image(dtype, samples, frames=frames)
    write_tiff(tmp_path / "x.tif", image)
    back = read_image(tmp_path / "x.tif")
    assert back.pixels.dtype == dtype
    np.testing.assert_array_equal(back.pixels, image.pixels)
    assert (back.photometric, back.signed) == (image.photometric, image.signed)


def test_real_images_through_png_and_tiff(tmp_path):
    for name in ("MR2_UNCR.dcm", "US1_UNCR.dcm", "OBXXXX1A.dcm"):
        image = read_image(sample(name))
        for suffix in (".png", ".tiff"):
            path = write_image(tmp_path / (name + suffix), image)
            np.testing.assert_array_equal(read_image(path).pixels, image.pixels)


# --------------------------------------------------------------------------- DICOM

def test_dicom_round_trip_keeps_identity(tmp_path):
    source = read_image(sample("CT_small.dcm"))
    out = write_dicom(tmp_path / "ct.dcm", source)
    back = read_image(out)
    np.testing.assert_array_equal(back.pixels, source.pixels)
    assert (back.bits_stored, back.signed, back.photometric) == (16, True, "MONOCHROME2")
    assert (back.rescale_slope, back.rescale_intercept, back.modality) == (1.0, -1024.0, "CT")
    old, new = source.dataset, back.dataset
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"):
        assert new[keyword].value == old[keyword].value, keyword
    assert new.SOPInstanceUID != old.SOPInstanceUID
    assert new.file_meta.MediaStorageSOPInstanceUID == new.SOPInstanceUID
    assert new.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert "LossyImageCompression" not in new
    assert only_file(tmp_path) == ["ct.dcm"]


@pytest.mark.parametrize("name", [
    "MR_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_2k_lossless.dcm", "RG3_UNCR.dcm",
    "SC_rgb_rle_16bit_2frame.dcm", "image_dfl.dcm", "MR_small_bigendian.dcm", "mlut_18.dcm",
])
def test_dicom_round_trip_pixels_and_header(tmp_path, name):
    source = read_image(sample(name))
    back = read_image(write_dicom(tmp_path / "out.dcm", source))
    assert back.pixels.dtype == source.pixels.dtype
    np.testing.assert_array_equal(back.pixels, source.pixels)
    assert (back.bits_stored, back.signed, back.photometric) == (
        source.bits_stored, source.signed, source.photometric)
    ds = back.dataset
    assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (source.rows, source.cols, source.samples)
    assert ds.HighBit == ds.BitsStored - 1
    assert int(ds.get("NumberOfFrames", 1)) == source.frames


def test_dicom_lossy_attributes(tmp_path):
    source = read_image(sample("MR_small.dcm"))
    ds = read_image(write_dicom(tmp_path / "l.dcm", source, lossy=True, ratio=12.5, method="KERAS_CODEC")).dataset
    assert ds.LossyImageCompression == "01"
    assert [float(r) for r in _values(ds.LossyImageCompressionRatio)] == [12.5]
    assert list(_values(ds.LossyImageCompressionMethod)) == ["KERAS_CODEC"]


def test_dicom_lossy_history_appended(tmp_path):
    source = read_image(sample("693_UNCI.dcm"))  # already lossy: ratio 338.68..., ISO_15444_1
    ds = read_image(write_dicom(tmp_path / "l.dcm", source, lossy=True, ratio=4)).dataset
    assert ds.LossyImageCompression == "01"
    ratios = [float(r) for r in _values(ds.LossyImageCompressionRatio)]
    assert len(ratios) == 2 and ratios[0] == pytest.approx(338.687338501292, rel=1e-6) and ratios[1] == 4
    assert list(_values(ds.LossyImageCompressionMethod)) == ["ISO_15444_1", "KERAS_CODEC"]


def test_dicom_lossless_write_keeps_lossy_history(tmp_path):
    source = read_image(sample("693_UNCI.dcm"))
    ds = read_image(write_dicom(tmp_path / "k.dcm", source)).dataset
    assert ds.LossyImageCompression == "01"
    assert list(_values(ds.LossyImageCompressionMethod)) == ["ISO_15444_1"]
    kept_00 = read_image(write_dicom(tmp_path / "z.dcm", read_image(sample("eCT_Supplemental.dcm")))).dataset
    assert kept_00.LossyImageCompression == "00"


def test_dicom_lossy_arguments_checked(tmp_path):
    image = read_image(sample("MR_small.dcm"))
    with pytest.raises(ValueError, match="ratio"):
        write_dicom(tmp_path / "a.dcm", image, lossy=True)
    with pytest.raises(ValueError, match="lossy=True"):
        write_dicom(tmp_path / "a.dcm", image, ratio=3.0)
    with pytest.raises(ValueError, match="code string"):
        write_dicom(tmp_path / "a.dcm", image, lossy=True, ratio=3.0, method="my codec!")
    assert only_file(tmp_path) == []


def test_palette_written_as_rgb_without_lut(tmp_path):
    source = read_image(sample("examples_palette.dcm"))
    ds = pydicom.dcmread(write_dicom(tmp_path / "p.dcm", source))
    assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3 and ds.PlanarConfiguration == 0
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (8, 8, 7)  # its table holds 8-bit colours
    assert not [e for e in ds if e.tag.group == 0x0028 and 0x1100 <= e.tag.element <= 0x1223]
    np.testing.assert_array_equal(read_image(tmp_path / "p.dcm").pixels, source.pixels)


def test_monochrome1_written_as_monochrome1(tmp_path):
    source = read_image(sample("RG3_UNCR.dcm"))
    ds = pydicom.dcmread(write_dicom(tmp_path / "m1.dcm", source))
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 10


@pytest.mark.parametrize("dtype, samples, frames", [
    (np.uint8, 1, 1), (np.uint16, 1, 1), (np.int16, 1, 1), (np.uint8, 3, 1), (np.uint16, 1, 4), (np.uint8, 3, 2),
])
def test_dicom_without_source_is_secondary_capture(tmp_path, dtype, samples, frames):
    image = random_image(dtype, samples, frames=frames)
    path = write_dicom(tmp_path / "sc.dcm", image)
    back = read_image(path)
    np.testing.assert_array_equal(back.pixels, image.pixels)
    ds = back.dataset
    assert "Secondary Capture" in ds.SOPClassUID.name
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "PatientID", "Modality", "ConversionType"):
        assert keyword in ds
    assert "LossyImageCompression" not in ds


def test_write_image_dispatch(tmp_path):
    image = random_image(np.uint16, 1)
    for name in ("a.dcm", "a.png", "a.tif", "a.TIFF"):
        np.testing.assert_array_equal(read_image(write_image(tmp_path / name, image)).pixels, image.pixels)
    with pytest.raises(ValueError, match=r"\.jpg"):
        write_image(tmp_path / "a.jpg", image)


# --------------------------------------------------------------------------- atomicity

def test_refuses_to_overwrite(tmp_path):
    image = random_image(np.uint8, 1)
    target = tmp_path / "x.png"
    target.write_bytes(b"precious")
    for writer in (write_png, write_tiff, write_dicom):
        with pytest.raises(FileExistsError, match="x.png"):
            writer(target, image)
    assert target.read_bytes() == b"precious"
    assert only_file(tmp_path) == ["x.png"]
    write_png(target, image, overwrite=True)
    np.testing.assert_array_equal(read_image(target).pixels, image.pixels)
    assert only_file(tmp_path) == ["x.png"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        write_dicom(tmp_path / "y.dcm", random_image(np.uint16, 1))
    assert only_file(tmp_path) == []


# --------------------------------------------------------------------------- properties

@settings(max_examples=25, deadline=None)
@given(
    pixels=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.uint16, np.int8, np.int16]),
        shape=st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.sampled_from([1, 3])),
    ),
)
def test_random_arrays_round_trip_through_dicom_and_tiff(pixels):
    signed = pixels.dtype.kind == "i"
    image = Image(pixels=pixels, bits_stored=8 * pixels.dtype.itemsize, signed=signed,
                  photometric="RGB" if pixels.shape[3] == 3 else "MONOCHROME2")
    with tempfile.TemporaryDirectory() as folder:
        for name in ("p.dcm", "p.tif"):
            back = read_image(write_image(Path(folder) / name, image))
            assert back.pixels.dtype == pixels.dtype
            np.testing.assert_array_equal(back.pixels, pixels)
            assert back.signed == signed


@settings(max_examples=15, deadline=None)
@given(bits=st.integers(9, 16), signed=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_partial_bit_depths_round_trip_through_dicom(bits, signed, seed):
    rng = np.random.default_rng(seed)
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    pixels = rng.integers(low, high, size=(1, 8, 8, 1), endpoint=True).astype(np.int16 if signed else np.uint16)
    image = Image(pixels=pixels, bits_stored=bits, signed=signed)
    with tempfile.TemporaryDirectory() as folder:
        back = read_image(write_dicom(Path(folder) / "b.dcm", image))
    np.testing.assert_array_equal(back.pixels, pixels)
    assert (back.bits_stored, back.signed) == (bits, signed)


def _values(value):
    return [value] if isinstance(value, (str, float, int)) else list(value)


def test_implementation_version_name_is_the_installed_version():
    from importlib.metadata import version

    import keras_codec
    from data.writers import implementation_version_name

    assert keras_codec.__version__ == version("keras_codec")
    assert implementation_version_name() == f"KCODEC_{version('keras_codec')}"[:16]
