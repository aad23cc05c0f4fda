"""Tests for keras_codec.evaluation.baselines: exact lossless round trips, error bounds, the PSNR search."""

import numpy as np
import pydicom
import pydicom.data
import pytest

from keras_codec.evaluation import baselines as b
from keras_codec.evaluation import metrics

ROW_KEYS = {"codec", "param", "n_bytes", "bpp", "psnr", "psnr_bitdepth", "ssim", "max_abs_err", "encode_s", "decode_s"}
CODECS = [b.JPEG2000(), b.JPEGXL(), b.JPEGLS()]


@pytest.fixture(scope="module")
def ct():
    """CT_small.dcm: signed int16, 128 x 128."""
    return pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm")).pixel_array


def smooth(rows=96, cols=112, bits=12, dtype=np.uint16):
    y, x = np.mgrid[0:rows, 0:cols]
    z = 0.5 + 0.3 * np.sin(x / 11.0) * np.cos(y / 7.0) + 0.1 * np.random.default_rng(0).normal(size=(rows, cols))
    return np.clip(z * (2**bits - 1), 0, 2**bits - 1).astype(dtype)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize("kind", ["uint8", "uint16_12bit", "int16_ct"])
def test_lossless_round_trip_is_exact(codec, kind, ct):
    plane = {"uint8": smooth(bits=8, dtype=np.uint8), "uint16_12bit": smooth(), "int16_ct": ct}[kind]
    data = codec.encode(plane)
    assert isinstance(data, bytes) and 0 < len(data) < plane.nbytes
    decoded = codec.decode(data, plane.dtype)
    assert decoded.dtype == plane.dtype
    np.testing.assert_array_equal(decoded, plane)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_signed_with_bits_stored_round_trips(codec):
    plane = (smooth().astype(np.int32) - 2048).astype(np.int16)
    decoded = codec.decode(codec.encode(plane, bits_stored=12), np.int16, bits_stored=12)
    np.testing.assert_array_equal(decoded, plane)


@pytest.mark.parametrize("near", [1, 2, 4])
def test_jpegls_near_bounds_the_error(near, ct):
    for plane in (ct, smooth()):
        row = b.measure(b.JPEGLS(), plane, near)
        assert 0 < row["max_abs_err"] <= near


def test_jpeg2000_at_psnr_meets_target_closely(ct):
    row = b.at_psnr(b.JPEG2000(), ct, 46.0)
    assert set(row) == ROW_KEYS
    assert 46.0 <= row["psnr"] < 46.2
    assert row["n_bytes"] * 8 / ct.size == row["bpp"]
    gain = 20 * np.log10(65535 / metrics.dynamic_range(ct))
    assert row["psnr_bitdepth"] == pytest.approx(row["psnr"] + gain, abs=1e-9)
    worse = b.measure(b.JPEG2000(), ct, row["param"] - 0.5)
    assert worse["psnr"] < 46.0 or worse["n_bytes"] >= row["n_bytes"]


def test_jpegxl_lossy_on_16_bit(ct):
    plane = smooth()
    lossless = len(b.JPEGXL().encode(plane))
    row = b.measure(b.JPEGXL(), plane, 1.0, with_ms_ssim=True)
    assert set(row) == ROW_KEYS | {"ms_ssim"}
    assert 0 < row["n_bytes"] < lossless
    assert 30 < row["psnr"] < np.inf and 0 < row["ms_ssim"] <= 1
    row = b.at_psnr(b.JPEGXL(), ct, 42.0)
    assert row["psnr"] >= 42.0


def test_multisample_image_sums_plane_bytes():
    image = np.stack([smooth(), smooth()[::-1], smooth()[:, ::-1]], axis=-1)
    codec = b.JPEGLS()
    row = b.measure(codec, image, None)
    assert row["n_bytes"] == sum(len(codec.encode(np.ascontiguousarray(image[..., s]))) for s in range(3))
    assert row["max_abs_err"] == 0 and row["bpp"] == 8 * row["n_bytes"] / image.size
    frames = np.stack([image, image[::-1]])
    assert b.measure(codec, frames, 2)["max_abs_err"] <= 2


def test_rd_curve_jpegls_uses_near_values_and_jpeg2000_targets(ct):
    rows = b.rd_curve(b.JPEGLS(), ct, near_values=(0, 1, 3))
    assert [r["param"] for r in rows] == [0, 1, 3]
    assert [r["max_abs_err"] for r in rows] == [0, 1, 3]
    rows = b.rd_curve(b.JPEG2000(), ct, psnr_targets=(42.0, 48.0, 400.0))
    assert len(rows) == 2  # 400 dB is out of reach and skipped
    assert rows[0]["bpp"] < rows[1]["bpp"] and rows[0]["psnr"] >= 42.0 and rows[1]["psnr"] >= 48.0


def test_at_psnr_unreachable_raises(ct):
    with pytest.raises(ValueError, match="below the 400"):
        b.at_psnr(b.JPEG2000(), ct, 400.0)


def test_lossless_bpp_reports_three_codecs(ct):
    result = b.lossless_bpp(ct)
    assert set(result) == {"jpegls", "jpeg2000", "jpegxl"}
    assert all(2.0 < v < 16.0 for v in result.values())


def test_bad_inputs_are_rejected():
    codec = b.JPEG2000()
    with pytest.raises(ValueError, match="2-D"):
        codec.encode(np.zeros((4, 4, 2), np.uint16))
    with pytest.raises(ValueError, match="uint8, uint16 or int16"):
        codec.encode(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="bits_stored=12"):
        codec.encode(np.full((8, 8), 5000, np.uint16), bits_stored=12)


hevc = pytest.mark.skipif(not b.HEVC.available(), reason="needs the ffmpeg program with libx265")


@hevc
@pytest.mark.parametrize("chroma", ["444", "420"])
def test_hevc_codes_a_sequence_and_quality_follows_qp(chroma):
    rows, cols = np.mgrid[0:48, 0:64]
    base = np.stack([(rows * 3 + cols) % 256, (255 - cols * 2) % 256, (rows + 40) % 256], -1)
    frames = np.stack([np.roll(base, f, axis=1) for f in range(5)]).astype(np.uint8)
    fine, coarse = b.HEVC(chroma).measure(frames, 4), b.HEVC(chroma).measure(frames, 40)
    # 4:2:0 loses chroma detail whatever the QP, which caps its PSNR on colour content
    gain, floor = (10, 60) if chroma == "444" else (1, 30)
    assert fine["psnr"] > coarse["psnr"] + gain and fine["n_bytes"] > coarse["n_bytes"]
    assert fine["psnr"] > floor
    assert fine["codec"] == f"hevc-{chroma}" and fine["bpp"] == metrics.bpp(fine["n_bytes"], frames.size)


@hevc
def test_hevc_12_bit_grey_round_trip_shape_and_dtype():
    frames = (np.arange(3 * 32 * 40).reshape(3, 32, 40, 1) % 4000).astype(np.uint16)
    codec = b.HEVC()
    decoded = codec.decode(codec.encode(frames, 0), frames.shape, frames.dtype)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint16
    assert metrics.psnr(frames, decoded) > 50


def test_hevc_refuses_what_it_cannot_code():
    with pytest.raises(ValueError, match="12 bits"):
        b.HEVC()._formats(np.full((1, 4, 4, 1), 5000, np.uint16))
    with pytest.raises(ValueError, match="chroma"):
        b.HEVC(chroma="422")
    with pytest.raises(ValueError, match="QP"):
        b.HEVC().encode(np.zeros((1, 8, 8, 1), np.uint8), 60)
