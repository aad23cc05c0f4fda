"""PALETTE COLOR in and out: lossless keeps PALETTE COLOR (indices coded losslessly, tables in the metadata),
lossy and bounded coding of a table of 8-bit colours gives 8-bit RGB (coded like any RGB image), a table of
16-bit colours keeps PALETTE COLOR whatever was asked; every output a valid object of its IOD as far as its
pixel module goes."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut

from data.image import Image
from data.readers import read_image
from edge_runtime import bitstream as bs
from edge_runtime import runtime
from edge_runtime.codec import encode_image

PALETTE_DCM = get_testdata_file("examples_palette.dcm")  # US, 350 x 800, 8-bit indices, 16-bit table of c x 256
_LUT_TAGS = range(0x1100, 0x1224)


@pytest.fixture(scope="module")
def shipped():
    return runtime.load_codec(None)


@pytest.fixture(scope="module")
def palette16(tmp_path_factory):
    """examples_palette.dcm with a table of true 16-bit colours (no longer c x 256), cropped to 64 x 96."""
    ds = pydicom.dcmread(PALETTE_DCM)
    idx = ds.pixel_array[140:204, 300:396].copy()
    ds.PixelData, ds.Rows, ds.Columns = idx.tobytes(), 64, 96
    for c, shift in (("Red", 17), ("Green", 101), ("Blue", 55)):
        lut = np.frombuffer(getattr(ds, f"{c}PaletteColorLookupTableData"), "<u2").astype(np.int64)
        setattr(ds, f"{c}PaletteColorLookupTableData",
                np.clip(lut + shift + np.arange(256) % 7, 0, 65535).astype("<u2").tobytes())
    path = tmp_path_factory.mktemp("pal") / "palette16.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _lut_elements(ds) -> dict:
    return {int(e.tag): e.value for e in ds if e.tag.group == 0x0028 and e.tag.element in _LUT_TAGS}


def test_an_8_bit_table_is_read_as_8_bit_rgb():
    image, ds = read_image(PALETTE_DCM), pydicom.dcmread(PALETTE_DCM)
    assert (image.photometric, image.samples, image.bits_stored, image.pixels.dtype) == ("RGB", 3, 8, np.uint8)
    np.testing.assert_array_equal(image.pixels[0].astype(np.int64) << 8, apply_color_lut(ds.pixel_array, ds))


@pytest.mark.parametrize("options", [{"quality": 16}, {"max_error": 2}])
def test_8_bit_table_decodes_to_a_valid_8_bit_rgb_us_image(shipped, tmp_path, options):
    kcd, out = tmp_path / "p.kcd", tmp_path / "p.dcm"
    enc = runtime.encode_file(PALETTE_DCM, kcd, bundle=shipped, **options)
    assert not enc["palette_kept"] and runtime.info(kcd)["colour"] in ("RCT", "green difference")
    runtime.decode_file(kcd, out, bundle=shipped)
    src, ds = pydicom.dcmread(PALETTE_DCM), pydicom.dcmread(out)
    assert ds.SOPClassUID == src.SOPClassUID == pydicom.uid.UltrasoundImageStorage
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration) == ("RGB", 3, 0)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (8, 8, 7, 0)
    assert not _lut_elements(ds) and len(ds.PixelData) == 350 * 800 * 3
    original, decoded = read_image(PALETTE_DCM), read_image(out)
    err = int(np.abs(original.pixels.astype(int) - decoded.pixels.astype(int)).max())
    if "max_error" in options:  # graphics-like (a palette ultrasound): its lossless stream was the shorter
        assert err == 0 and runtime.info(kcd)["max_error"] == 0 and enc["max_error"] == 0
        assert ds.LossyImageCompression == "00"  # the colours the table displays, exactly
    else:
        assert ds.LossyImageCompression == "01"
        assert runtime.psnr(original.pixels, decoded.pixels) > 45 and enc["bpp"] < 0.5


@pytest.mark.parametrize("source, options", [("8-bit table", {"max_error": 0}), ("16-bit table", {"quality": 12}),
                                             ("16-bit table", {"max_error": 3}), ("16-bit table", {})])
def test_palette_color_is_kept(shipped, palette16, tmp_path, source, options):
    """Lossless, or a table of 16-bit colours whatever was asked (16-bit RGB is not allowed in US): the indices
    are coded losslessly and the same PALETTE COLOR object comes back."""
    path = palette16 if source == "16-bit table" else PALETTE_DCM
    src = pydicom.dcmread(path)
    if source == "16-bit table":
        assert read_image(path).pixels.dtype == np.uint16
    kcd, out = tmp_path / "p16.kcd", tmp_path / "p16.dcm"
    enc = runtime.encode_file(path, kcd, bundle=shipped, **options)
    assert enc["palette_kept"] and enc["mode"] == "lossless"
    header = bs.read_header(kcd.read_bytes())
    assert (header.photometric, header.samples, header.lossless) == ("PALETTE COLOR", 1, True)
    runtime.decode_file(kcd, out, bundle=shipped)
    ds = pydicom.dcmread(out)
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel) == ("PALETTE COLOR", 1)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (8, 8, 7, 0)
    assert "PlanarConfiguration" not in ds and ds.LossyImageCompression == "00"
    luts = _lut_elements(ds)
    assert luts == _lut_elements(src) and luts[0x00281101] == [256, 0, 16]
    assert (ds.Rows, ds.Columns, ds.SOPClassUID) == (src.Rows, src.Columns, src.SOPClassUID)
    np.testing.assert_array_equal(ds.pixel_array, src.pixel_array)
    np.testing.assert_array_equal(apply_color_lut(ds.pixel_array, ds), apply_color_lut(src.pixel_array, src))


def test_a_kept_palette_decodes_to_png_in_colour(shipped, palette16, tmp_path):
    kcd, png = tmp_path / "p16.kcd", tmp_path / "p16.png"
    runtime.encode_file(palette16, kcd, bundle=shipped)
    runtime.decode_file(kcd, png, bundle=shipped)
    np.testing.assert_array_equal(read_image(png).pixels, read_image(palette16).pixels)


def test_palette_indices_are_never_coded_lossily(shipped):
    bundle, coder = shipped
    image = Image(pixels=np.zeros((1, 8, 8, 1), np.uint8), bits_stored=8, signed=False, photometric="PALETTE COLOR")
    for options in ({"quality": 14}, {"quality": None, "max_error": 1}):
        with pytest.raises(ValueError, match="labels"):
            encode_image(image, coder=coder, model_id=bundle.model_id, **options)
    data = encode_image(image, coder=coder, model_id=bundle.model_id, quality=None, max_error=0, metadata=b"x")
    assert bs.read_header(data).photometric == "PALETTE COLOR"


def test_palette_headers_are_checked():
    fields = dict(model_id=bytes(32), rows=4, cols=4, frames=1, samples=1, bits_stored=8, signed=False,
                  dtype="uint8", photometric="PALETTE COLOR", quality=0, max_error=0, lossless=True, levels=2,
                  tile_rows=4, tile_cols=4, norm=[(0, 9)])
    assert bs.parse(bs.pack(bs.Header(**fields), [b"t"], b"meta"))[0].photometric == "PALETTE COLOR"
    for changes, message in (({"quality": 14, "max_error": -1, "lossless": False}, "labels"),
                             ({"samples": 3, "norm": [(0, 9)] * 3}, "does not fit 3 sample")):
        with pytest.raises(ValueError, match=message):
            bs.pack(bs.Header(**{**fields, **changes}), [b"t"] * (1 + 2 * (changes.get("samples", 1) == 3)))
