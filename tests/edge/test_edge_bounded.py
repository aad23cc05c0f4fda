"""Error-bounded and lossless coding (--max-error D): the bound on every pixel, lossless bit-exactness,
what the stream and the DICOM say, rate control, corrupt streams."""
from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from data.image import Image
from data.readers import read_image
from edge_runtime import bitstream as bs
from edge_runtime import exact_dwt, runtime
from edge_runtime.bundle import default_bundle_path
from edge_runtime.codec import PlaneCoder, decode_image, encode_image
from edge_runtime.residual import RESIDUAL_FILE

_DTYPES = {"uint8": (np.uint8, False), "uint16": (np.uint16, False), "int8": (np.int8, True),
           "int16": (np.int16, True)}


@pytest.fixture(scope="module")
def bounded_codec(tmp_path_factory, bundle_path):
    """The TFLite test bundle plus the shipped residual model."""
    folder = tmp_path_factory.mktemp("bundle") / "b"
    shutil.copytree(bundle_path, folder)
    shutil.copy(default_bundle_path() / RESIDUAL_FILE, folder / RESIDUAL_FILE)
    return runtime.load_codec(folder)


def _random_image(rng, rows, cols, dtype_name, bits, frames=1, samples=1):
    dtype, signed = _DTYPES[dtype_name]
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    r, c = np.mgrid[0:rows, 0:cols]
    smooth = (np.sin(r / (3 + rng.random() * 9)) + np.cos(c / (2 + rng.random() * 7))) * (hi - lo) / 5
    x = (lo + hi) / 2 + smooth[None, :, :, None] + rng.normal(0, rng.choice([0.5, 3, 30]), (frames, rows, cols, samples))
    if rng.random() < 0.3:  # a flat block with a hard edge
        x[:, : rows // 2, : cols // 3] = lo + (hi - lo) // 7
    return Image(pixels=np.clip(np.round(x), lo, hi).astype(dtype), bits_stored=bits, signed=signed,
                 photometric="RGB" if samples == 3 else "MONOCHROME2")


def _roundtrip(coder, b, image, d, quality=None):
    data = encode_image(image, coder=coder, model_id=b.model_id, quality=quality, max_error=d)
    out, header = decode_image(data, coder=coder, model_ids=[b.model_id])
    return data, out, header


@pytest.mark.parametrize("seed", range(12))
def test_bound_holds_on_random_images(exact_coder, seed):
    """Random sizes, bit depths, signedness and bounds: every pixel within D, D = 0 bit-exact."""
    b, coder = exact_coder
    rng = np.random.default_rng(seed)
    dtype_name = ["uint8", "uint16", "int8", "int16"][seed % 4]
    bits = int(rng.integers(2, 9 if dtype_name.endswith("8") else 17))
    rows, cols = (int(v) for v in rng.integers(1, 70, 2))
    image = _random_image(rng, rows, cols, dtype_name, bits, samples=1 + 2 * (seed % 5 == 0))
    for d in (0, int(rng.integers(1, 4)), int(rng.integers(4, 40))):
        data, out, header = _roundtrip(coder, b, image, d, quality=int(rng.integers(1, 31)) if seed % 2 else None)
        err = np.abs(out.pixels.astype(np.int64) - image.pixels.astype(np.int64))
        assert err.max() <= d, (seed, d, err.max())
        assert out.pixels.dtype == image.pixels.dtype
        assert header.max_error == d and header.error_bounded and header.lossless == (d == 0)
        if d == 0:
            np.testing.assert_array_equal(out.pixels, image.pixels)


def test_lossless_full_range_and_extremes(exact_coder):
    """Full 16-bit signed range, a constant plane, a 1-pixel image and values on a 256 grid (palette)."""
    b, coder = exact_coder
    rng = np.random.default_rng(1)
    cases = [
        Image(pixels=rng.integers(-32768, 32768, (1, 33, 47, 1)).astype(np.int16), bits_stored=16, signed=True),
        Image(pixels=np.full((1, 20, 9, 1), 4095, np.uint16), bits_stored=12, signed=False),
        Image(pixels=np.array([[[[200]]]], np.uint8), bits_stored=8, signed=False),
        Image(pixels=(rng.integers(0, 256, (1, 40, 40, 3)) * 256).astype(np.uint16), bits_stored=16, signed=False,
              photometric="RGB"),
    ]
    for image in cases:
        _, out, _ = _roundtrip(coder, b, image, 0)
        np.testing.assert_array_equal(out.pixels, image.pixels)
    # the 256 grid is coded as 8-bit values: far fewer bits than the same noise at full 16-bit resolution
    grid = cases[3]
    noisy = Image(pixels=grid.pixels + rng.integers(0, 256, grid.pixels.shape).astype(np.uint16),
                  bits_stored=16, signed=False, photometric="RGB")
    assert len(_roundtrip(coder, b, grid, 0)[0]) < 0.7 * len(_roundtrip(coder, b, noisy, 0)[0])


def test_larger_bound_costs_fewer_bits(exact_coder):
    b, coder = exact_coder
    image = _random_image(np.random.default_rng(3), 64, 64, "uint16", 12)
    sizes = [len(_roundtrip(coder, b, image, d)[0]) for d in (0, 1, 2, 4, 8)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < 0.6 * sizes[0], sizes


def test_decode_is_the_same_with_both_kernels(bounded_codec, synthetic_dcm, tmp_path, bundle_path):
    """The bounded decode does not go through TFLite: XNNPACK and reference kernels give the same pixels."""
    kcd = tmp_path / "s.kcd"
    runtime.encode_file(synthetic_dcm, kcd, max_error=1, bundle=bounded_codec)
    ref = runtime.load_codec(bounded_codec[0], kernels="reference")
    a, _ = decode_image(kcd.read_bytes(), coder=bounded_codec[1])
    c, _ = decode_image(kcd.read_bytes(), coder=ref[1])
    np.testing.assert_array_equal(a.pixels, c.pixels)


@pytest.mark.parametrize("d", [0, 3])
def test_dicom_says_lossless_or_bounded(bounded_codec, ct_dcm, tmp_path, d):
    kcd, out = tmp_path / "ct.kcd", tmp_path / "ct.dcm"
    enc = runtime.encode_file(ct_dcm, kcd, max_error=d, bundle=bounded_codec)
    assert enc["mode"] == ("lossless" if d == 0 else f"max error {d}") and enc["max_error"] == d
    info = runtime.info(kcd, bundle_path=bounded_codec[0].path)
    assert info["mode"] == enc["mode"] and info["max_error"] == d
    runtime.decode_file(kcd, out, bundle=bounded_codec)
    ds = pydicom.dcmread(out)
    orig = read_image(ct_dcm).pixels.astype(np.int64)
    assert np.abs(read_image(out).pixels.astype(np.int64) - orig).max() <= d
    if d == 0:
        assert ds.LossyImageCompression == "00" and "LossyImageCompressionRatio" not in ds
    else:
        assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "KERAS_CODEC"
        assert float(ds.LossyImageCompressionRatio) == pytest.approx(enc["ratio"], rel=1e-3)


def test_bundle_without_residual_model_says_so(codec, synthetic_dcm, tmp_path):
    with pytest.raises(ValueError, match="residual model"):
        runtime.encode_file(synthetic_dcm, tmp_path / "x.kcd", max_error=0, bundle=codec)
    assert not (tmp_path / "x.kcd").exists()


def test_options_are_exclusive(bounded_codec, synthetic_dcm, tmp_path):
    with pytest.raises(ValueError, match="choose one"):
        runtime.encode_file(synthetic_dcm, tmp_path / "x.kcd", quality=5, max_error=1, bundle=bounded_codec)
    with pytest.raises(ValueError, match=">= 0"):
        runtime.encode_file(synthetic_dcm, tmp_path / "x.kcd", max_error=-1, bundle=bounded_codec)


def test_rate_control_meets_targets(bounded_codec, synthetic_dcm, tmp_path):
    orig = read_image(synthetic_dcm).pixels
    r = runtime.encode_file(synthetic_dcm, tmp_path / "p.kcd", target_psnr=38.0, bundle=bounded_codec)
    dec = runtime.decode_file(tmp_path / "p.kcd", tmp_path / "p.png", bundle=bounded_codec)
    assert dec and r["psnr"] >= 38.0 and r["quality"] is not None
    assert runtime.psnr(orig, read_image(tmp_path / "p.png").pixels) == pytest.approx(r["psnr"])
    if r["quality"] > 1:  # the lowest level that reaches it
        lower = runtime.encode_file(synthetic_dcm, tmp_path / "l.kcd", quality=r["quality"] - 1, bundle=bounded_codec)
        runtime.decode_file(tmp_path / "l.kcd", tmp_path / "l.png", bundle=bounded_codec)
        assert runtime.psnr(orig, read_image(tmp_path / "l.png").pixels) < 38.0, lower
    # beyond the finest lossy level the target is met with an error bound (lossless at worst)
    r = runtime.encode_file(synthetic_dcm, tmp_path / "hi.kcd", target_psnr=80.0, bundle=bounded_codec)
    assert r["max_error"] is not None and r["psnr"] >= 80.0
    r = runtime.encode_file(synthetic_dcm, tmp_path / "b.kcd", target_bpp=1.0, bundle=bounded_codec)
    assert r["bpp"] <= 1.0 and r["quality"] is not None
    with pytest.raises(ValueError, match="cannot reach"):
        runtime.encode_file(synthetic_dcm, tmp_path / "z.kcd", target_bpp=1e-4, bundle=bounded_codec)


def test_corrupt_bounded_tile_is_reported(exact_coder):
    b, coder = exact_coder
    image = _random_image(np.random.default_rng(5), 30, 30, "uint16", 12)
    data = encode_image(image, coder=coder, model_id=b.model_id, quality=None, max_error=2)
    header, tiles, meta = bs.parse(data)
    broken = [tiles[0][:3]]  # shorter than the tile header
    with pytest.raises(bs.InvalidBitstreamError, match="tile 0"):
        decode_image(bs.pack(header, broken, meta), coder=coder)
    bad_q = [bytes([99]) + tiles[0][1:]]  # quality out of range
    with pytest.raises(bs.InvalidBitstreamError, match="inconsistent"):
        decode_image(bs.pack(header, bad_q, meta), coder=coder)


def test_exact_dwt_is_an_exact_inverse():
    x = np.random.default_rng(0).normal(size=(48, 80))
    for w in exact_dwt.WAVELETS:
        for mode in ("symmetric", "periodization"):
            y = exact_dwt.synthesis(exact_dwt.analysis(x, 3, w, mode), 3, w, mode)
            assert np.abs(y - x).max() < 1e-12, (w, mode)


def test_cli_max_error_and_targets(bounded_codec, synthetic_dcm, tmp_path, capsys):
    from edge_runtime.cli import main

    b = str(bounded_codec[0].path)
    out = tmp_path / "c.kcd"
    assert main(["encode", str(synthetic_dcm), str(out), "--max-error", "2", "--bundle", b]) == 0
    assert "max error 2" in capsys.readouterr().out
    assert main(["info", str(out), "--bundle", b]) == 0
    assert "max error 2 (every pixel within 2 of the original" in capsys.readouterr().out
    assert main(["encode", str(synthetic_dcm), str(tmp_path / "l.kcd"), "--max-error", "0", "--bundle", b]) == 0
    assert "lossless" in capsys.readouterr().out
    assert main(["encode", str(synthetic_dcm), str(tmp_path / "t.kcd"), "--target-psnr", "40", "--bundle", b]) == 0
    assert "(target 40 dB)" in capsys.readouterr().out
    assert main(["encode", str(synthetic_dcm), str(tmp_path / "f.kcd"), "--max-error", "0", "--fast", "--bundle",
                 b]) == 0
    assert "lossless" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "f.kcd"), "--bundle", b]) == 0
    assert "lossless (bit-exact; 1 of 1 tile stream(s) without a base)" in capsys.readouterr().out
    assert main(["decode", str(tmp_path / "f.kcd"), str(tmp_path / "f.dcm"), "--bundle", b]) == 0
    assert np.array_equal(pydicom.dcmread(tmp_path / "f.dcm").pixel_array, pydicom.dcmread(synthetic_dcm).pixel_array)
    capsys.readouterr()
    assert main(["encode", str(synthetic_dcm), str(tmp_path / "q.kcd"), "--fast", "--bundle", b]) == 1  # lossy
    assert "fast codes error-bounded tiles" in capsys.readouterr().err and not (tmp_path / "q.kcd").exists()
    with pytest.raises(SystemExit):  # one way of choosing the rate at a time
        main(["encode", str(synthetic_dcm), str(tmp_path / "x.kcd"), "--quality", "5", "--max-error", "1"])
    with pytest.raises(SystemExit):
        main(["encode", str(synthetic_dcm), str(tmp_path / "x.kcd"), "--max-error", "-1"])


@pytest.mark.parametrize("lo, hi", [(0, 9), (-32768, 32767), (-5, 10 ** 7)])  # counted, counted, sorted
def test_values_present_are_numpys_unique(lo, hi):
    from edge_runtime.codec import _values_present

    x = np.random.default_rng(hi).integers(lo, hi + 1, (31, 45))
    x[0, 0], x[-1, -1] = lo, hi
    values, index = _values_present(x, lo, hi)
    want, inverse = np.unique(x, return_inverse=True)
    assert np.array_equal(values, want) and np.array_equal(index.reshape(x.shape), inverse.reshape(x.shape))


def test_few_values_are_coded_as_a_table(exact_coder, monkeypatch):
    """A lossless tile using few of its range's values: indices into a value table, exact, and shorter."""
    b, coder = exact_coder
    monkeypatch.setattr(PlaneCoder, "RASTER_GATE", 2.0)  # graphics without raster tiles (test_edge_raster)
    rng = np.random.default_rng(8)
    levels = np.array([0, 17, 40, 41, 90, 200, 255])
    r, c = np.mgrid[0:48, 0:64]
    idx = ((r // 8 + c // 11) % len(levels))
    idx[rng.random(idx.shape) < 0.05] = 0  # some isolated dots
    x = levels[idx]
    image = Image(pixels=x.astype(np.uint8)[None, :, :, None], bits_stored=8, signed=False)
    data, out, _ = _roundtrip(coder, b, image, 0)
    np.testing.assert_array_equal(out.pixels, image.pixels)
    _, tiles, _ = bs.parse(data)
    assert tiles[0][1:5] == b"\0\0\0\0"  # divisor 0: the value table
    bad = bytearray(tiles[0])
    bad[13:17] = (300).to_bytes(4, "little", signed=True)  # a table value outside [lo, hi]
    with pytest.raises(ValueError, match="table"):
        coder.decode_bounded(bytes(bad), 48, 64, 0, 255, 0)


def test_graphics_with_a_bound_are_coded_losslessly_when_that_is_shorter(exact_coder):
    """With a max error D > 0, a tile that is mostly flat (graphics, test patterns) is also coded losslessly,
    flagged so, and the shorter kept; natural images are not; a lossless tile decodes exactly. (With a base:
    tiles without one, edge_runtime.direct, are tested in test_edge_direct.py.)"""
    b, shipped = exact_coder
    coder = PlaneCoder(shipped.p, shipped.coding, shipped.transforms, shipped.residual, direct=False)
    levels = np.array([0, 17, 40, 41, 90, 200, 255])
    r, c = np.mgrid[0:64, 0:64]
    x = levels[(r // 8 + c // 11) % len(levels)]
    d = 2
    tile = coder.encode_bounded(x, 0, 255, d)
    assert tile[0] & PlaneCoder.LOSSLESS and tile[1:5] == b"\0\0\0\0"  # lossless, through the value table
    near_only = PlaneCoder(coder.p, coder.coding, coder.transforms, coder.residual, direct=False)
    near_only.LOSSLESS_GATE = 2.0  # never tries the lossless candidate
    assert len(near_only.encode_bounded(x, 0, 255, d)) > len(tile)
    assert len(shipped.encode_bounded(x, 0, 255, d)) <= len(tile)  # the shipped coder keeps the shortest
    np.testing.assert_array_equal(coder.decode_bounded(tile, 64, 64, 0, 255, d), x)
    image = Image(pixels=x.astype(np.uint8)[None, :, :, None], bits_stored=8, signed=False)
    data, out, _ = _roundtrip(coder, b, image, d)
    np.testing.assert_array_equal(out.pixels, image.pixels)
    # without the flag, a value table in a tile of a plane with a bound is refused
    bad = bytes([tile[0] & ~PlaneCoder.LOSSLESS]) + tile[1:]
    with pytest.raises(ValueError, match="table"):
        coder.decode_bounded(bad, 64, 64, 0, 255, d)
    noisy = np.clip(np.round(128 + np.random.default_rng(3).normal(0, 20, (64, 64))), 0, 255).astype(np.int64)
    assert not coder.encode_bounded(noisy, 0, 255, d)[0] & PlaneCoder.LOSSLESS
