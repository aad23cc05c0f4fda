"""RGB through the colour transform (edge_runtime.colour): lossless bit-exact, every sample within the bound,
grey frames as one plane, chroma steps set by luma, the header's colour fields, DICOM output."""
from __future__ import annotations

import zlib

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.image import Image
from data.readers import read_image
from edge_runtime import bitstream as bs
from edge_runtime import colour, exact_dwt, runtime
from edge_runtime.bundle import default_bundle_path, load_bundle
from edge_runtime.codec import (PlaneCoder, decode_group, decode_image, decode_plane, encode_group, encode_image,
                                 encode_plane)

_BUNDLE = load_bundle(default_bundle_path())
_P = _BUNDLE.manifest["codec"]
# numpy analysis (any size, no TFLite); bounded bases decode through the shipped refinement's integer network
_CODER = PlaneCoder(_P, _BUNDLE.coding, {n: exact_dwt.ExactTransforms(n, _P["mode"]) for n in _P["transforms"]},
                    _BUNDLE.residual, _BUNDLE.refine)
_ID = _BUNDLE.model_id


def _code(image, **options):
    data = encode_image(image, coder=_CODER, model_id=_ID, **options)
    out, header = decode_image(data, coder=_CODER, model_ids=[_ID])
    return data, out, header


def _err(a: Image, b: Image) -> int:
    return int(np.abs(a.pixels.astype(np.int64) - b.pixels.astype(np.int64)).max())


def _ultrasound(rows=48, cols=64, frames=1, dtype=np.uint8, bits=8, seed=0, colour_box=True) -> Image:
    """Grey speckle with a colour box (a Doppler overlay) and, in some frames, nothing coloured at all."""
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    r, c = np.mgrid[0:rows, 0:cols]
    out = []
    for f in range(frames):
        grey = np.clip(top * (0.3 + 0.2 * np.sin(r / 6 + c / 9 + f)) + rng.normal(0, top / 25, (rows, cols)), 0, top)
        frame = np.repeat(np.round(grey)[:, :, None], 3, axis=2)
        if colour_box and f % 2 == 0:
            box = (slice(rows // 4, rows // 2), slice(cols // 5, cols // 2))
            frame[box + (0,)] = top
            frame[box + (1,)] = np.clip(rng.normal(top * 0.6, top / 6, frame[box + (1,)].shape), 0, top)
            frame[box + (2,)] = 0
        out.append(frame)
    return Image(pixels=np.stack(out).astype(dtype), bits_stored=bits, signed=False, photometric="RGB",
                 modality="US")


# ----------------------------------------------------------------------------- the transform itself

@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), bits=st.integers(1, 16))
def test_rct_is_exactly_invertible(seed, bits):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 1 << bits, (5, 7, 3))
    rgb[0, 0] = (1 << bits) - 1, 0, (1 << bits) - 1  # the extremes: chroma at +-max
    y, cb, cr = colour.rct_forward(rgb.astype(np.uint16))
    assert y.min() >= 0 and y.max() <= (1 << bits) - 1
    np.testing.assert_array_equal(colour.rct_inverse(y, cb, cr), rgb)


def test_transform_choice_and_grey_frames():
    assert colour.transform_for(None) == colour.transform_for(0) == bs.COLOUR_RCT
    assert colour.transform_for(1) == colour.transform_for(7) == bs.COLOUR_GREEN_DIFFERENCE
    image = _ultrasound(frames=3)
    assert [colour.frame_kind(f) for f in image.pixels] == [bs.FRAME_COLOUR, bs.FRAME_GREY, bs.FRAME_COLOUR]
    assert colour.applies(image)
    assert not colour.applies(Image(pixels=image.pixels.astype(np.int16), bits_stored=8, signed=True,
                                    photometric="RGB"))


# ----------------------------------------------------------------------------- lossless and the bound

@pytest.mark.parametrize("dtype, bits", [(np.uint8, 8), (np.uint16, 16), (np.uint16, 12)])
def test_lossless_is_bit_exact(dtype, bits):
    image = _ultrasound(frames=2, dtype=dtype, bits=bits, seed=bits)
    px = image.pixels
    px[0, 0, 0] = ((1 << bits) - 1, 0, (1 << bits) - 1)  # chroma at both extremes
    px[0, 0, 1] = (0, (1 << bits) - 1, 0)
    data, out, header = _code(image, quality=None, max_error=0)
    np.testing.assert_array_equal(out.pixels, image.pixels)
    assert out.pixels.dtype == image.pixels.dtype and out.photometric == "RGB"
    assert header.lossless and header.colour == bs.COLOUR_RCT
    assert header.frame_kinds == [bs.FRAME_COLOUR, bs.FRAME_GREY] and header.planes == 4


@st.composite
def rgb_images(draw):
    """Small RGB images: grey with colour patches, noise, saturated colours, flat colour, 8 to 16 bits."""
    bits = draw(st.integers(1, 16))
    dtype = np.uint8 if bits <= 8 else np.uint16
    top = (1 << bits) - 1
    rows, cols, frames = draw(st.integers(1, 40)), draw(st.integers(1, 40)), draw(st.integers(1, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    kind = draw(st.sampled_from(["grey+patch", "noise", "saturated", "flat", "smooth"]))
    r, c = np.mgrid[0:rows, 0:cols]
    frames_out = []
    for _ in range(frames):
        if kind == "noise":
            x = rng.integers(0, top + 1, (rows, cols, 3))
        elif kind == "saturated":
            x = rng.choice([0, top], (rows, cols, 3))
        elif kind == "flat":
            x = np.broadcast_to(rng.integers(0, top + 1, 3), (rows, cols, 3))
        elif kind == "smooth":
            x = np.stack([top / 2 + top / 3 * np.sin(r / (3 + k) + c / (5 + 2 * k)) for k in range(3)], -1)
            x = x + rng.normal(0, 1 + top / 200, x.shape)
        else:
            g = top / 2 + top / 3 * np.cos(r / 4 - c / 6) + rng.normal(0, top / 40, (rows, cols))
            x = np.repeat(g[:, :, None], 3, axis=2)
            if rng.random() < 0.7:
                r0, c0 = rng.integers(0, rows), rng.integers(0, cols)
                x[r0:r0 + 9, c0:c0 + 13] = rng.integers(0, top + 1, 3)
        frames_out.append(np.clip(np.round(x), 0, top))
    return Image(pixels=np.stack(frames_out).astype(dtype), bits_stored=bits, signed=False, photometric="RGB")


@settings(max_examples=60, deadline=None)
@given(image=rgb_images(), d=st.sampled_from([1, 2, 5]), q=st.one_of(st.none(), st.integers(1, 30)))
def test_every_rgb_sample_within_the_bound(image, d, q):
    """The green difference: |R - R'|, |G - G'|, |B - B'| <= D on every sample, whatever the colours."""
    data, out, header = _code(image, quality=q, max_error=d)
    assert _err(image, out) <= d
    assert out.pixels.dtype == image.pixels.dtype
    if header.max_error == 0:  # colour graphics coded losslessly, that stream being the shorter
        assert image.frames == 1 and header.colour == bs.COLOUR_RCT and _err(image, out) == 0
    else:
        assert header.colour == bs.COLOUR_GREEN_DIFFERENCE and header.max_error == d and not header.lossless


@settings(max_examples=25, deadline=None)
@given(image=rgb_images())
def test_lossless_property(image):
    data, out, header = _code(image, quality=None, max_error=0)
    np.testing.assert_array_equal(out.pixels, image.pixels)
    assert header.colour == bs.COLOUR_RCT


def _colour_graphics(rows=64, cols=96, seed=0) -> Image:
    """Yellow strokes on black beside a strip of colour bars: colour graphics."""
    rng = np.random.default_rng(seed)
    x = np.zeros((rows, cols, 3), np.int64)
    x[(rng.random((rows // 2, cols // 2)) < 0.2).repeat(2, 0).repeat(2, 1)] = [255, 255, 0]
    x[:, :20] = rng.integers(0, 256, (rows, 1, 3))
    return Image(pixels=x.astype(np.uint8)[None], bits_stored=8, signed=False, photometric="RGB")


def test_colour_graphics_with_a_max_error_keep_the_shorter_of_two_streams(monkeypatch):
    image = _colour_graphics()
    exact, _, _ = _code(image, quality=None, max_error=0)
    for d in (1, 4):
        with monkeypatch.context() as m:  # the stream within the bound alone
            m.setitem(encode_image.__globals__, "_colour_graphics", lambda image: False)
            near, _, _ = _code(image, quality=None, max_error=d)
        assert encode_image.__globals__["_colour_graphics"](image) and near != exact
        data, out, header = _code(image, quality=None, max_error=d)
        assert data == min(near, exact, key=len)  # the lossless one when strictly shorter
        assert _err(image, out) <= d
        if data == exact:  # the header says so: the decode is exact
            assert header.max_error == 0 and header.colour == bs.COLOUR_RCT and _err(image, out) == 0
    data, _, header = _code(image, quality=None, max_error=1)
    assert data == exact and header.max_error == 0  # this one (1,180 bytes against 1,192)
    noisy = _ultrasound(seed=5)  # few equal neighbours: coded within the bound, once
    calls = []
    encode_colour = encode_image.__globals__["_encode_colour"]
    monkeypatch.setitem(encode_image.__globals__, "_encode_colour",
                        lambda *a: calls.append(a[2]["max_error"]) or encode_colour(*a))
    _data, _out, header = _code(noisy, quality=None, max_error=2)
    assert header.max_error == 2 and calls == [2]


def test_bound_and_grey_frames_in_a_multi_frame_loop():
    image = _ultrasound(frames=4, seed=3)
    for d in (1, 2, 5):
        data, out, header = _code(image, quality=None, max_error=d)
        assert _err(image, out) <= d
        assert header.frame_kinds == [bs.FRAME_COLOUR, bs.FRAME_GREY] * 2 and header.planes == 8
        grey = out.pixels[1]
        assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 2], grey[..., 1])


# ----------------------------------------------------------------------------- what the colour planes cost

def test_grey_rgb_costs_what_the_grey_image_costs():
    image = _ultrasound(frames=2, colour_box=False)
    grey = Image(pixels=np.ascontiguousarray(image.pixels[..., 1:2]), bits_stored=8, signed=False)
    for options in ({"quality": 14}, {"quality": None, "max_error": 0}, {"quality": None, "max_error": 2}):
        data, out, header = _code(image, **options)
        assert header.frame_kinds == [bs.FRAME_GREY] * 2 and header.planes == 2
        mono = encode_image(grey, coder=_CODER, model_id=_ID, **options)
        assert abs(len(data) - len(mono)) <= 8  # the colour transform byte and one kind byte per frame
        assert np.array_equal(out.pixels[..., 0], out.pixels[..., 1])
        assert np.array_equal(out.pixels[..., 2], out.pixels[..., 1])
        per_plane = encode_image(image, coder=_CODER, model_id=_ID, colour=False, **options)
        assert len(data) < 0.4 * len(per_plane)


def test_nearly_empty_chroma_planes_cost_almost_nothing():
    """A grey 96x128 frame with one coloured 3x3 spot: the two chroma planes are a few percent of the stream."""
    image = _ultrasound(rows=96, cols=128, colour_box=False, seed=5)
    image.pixels[0, 40:43, 60:63] = (200, 30, 40)
    for options in ({"quality": 14}, {"quality": None, "max_error": 0}):
        data, out, header = _code(image, **options)
        _, tiles, _ = bs.parse(data)
        assert header.frame_kinds == [bs.FRAME_COLOUR] and len(tiles) == 3
        assert len(tiles[1]) + len(tiles[2]) < 0.05 * len(tiles[0]), [len(t) for t in tiles]
    # a chroma plane that is all zero costs a hundred bytes or so
    flat = encode_plane(np.zeros((480, 640), np.int32), coder=_CODER, quality=14, max_error=None, tile=2048,
                        norm=(0, 510))[1]
    assert sum(map(len, flat)) < 150


def test_lossy_chroma_step_follows_luma():
    """Chroma is normalized over max(its range, 2 x luma's): its step in stored units is twice luma's."""
    image = _ultrasound(seed=9)
    data, out, header = _code(image, quality=16)
    assert header.colour == bs.COLOUR_RCT and header.frame_kinds == [bs.FRAME_COLOUR]
    y, cb, cr = colour.rct_forward(image.pixels[0])
    ly = (int(y.min()), int(y.max()))
    assert header.norm[0] == ly
    for (lo, hi), plane in zip(header.norm[1:], (cb, cr)):
        assert lo == plane.min() and hi - lo == max(int(plane.max() - plane.min()), 2 * (ly[1] - ly[0]))
    assert runtime.psnr(image.pixels, out.pixels) > 40
    # the chroma of a faint tint (range 6) gets luma's step, not a step 1/6 of its own range
    tinted = image.pixels.astype(np.int64).copy()
    tinted[..., 2] = np.clip(tinted[..., 2] + np.arange(image.cols) % 7 - 3, 0, 255)
    faint = Image(pixels=tinted.astype(np.uint8), bits_stored=8, signed=False, photometric="RGB")
    _, tiles, _ = bs.parse(encode_image(faint, coder=_CODER, model_id=_ID, quality=16))
    assert len(tiles[1]) < 0.5 * len(tiles[0])


def test_better_than_coding_rgb_planes_independently():
    image = _ultrasound(rows=64, cols=96, frames=2, seed=11)
    for options in ({"quality": 12}, {"quality": 18}, {"quality": None, "max_error": 0},
                    {"quality": None, "max_error": 2}):
        data, out, _ = _code(image, **options)
        old = encode_image(image, coder=_CODER, model_id=_ID, colour=False, **options)
        old_out, old_header = decode_image(old, coder=_CODER)
        assert old_header.colour == bs.COLOUR_NONE
        if "max_error" in options:
            assert _err(image, old_out) <= options["max_error"] and len(data) < 0.6 * len(old)
        else:  # fewer bits at about the same PSNR
            assert len(data) < 0.6 * len(old)
            assert runtime.psnr(image.pixels, out.pixels) > runtime.psnr(image.pixels, old_out.pixels) - 1.5


# ----------------------------------------------------------------------------- worker processes

def _fake_pool_map(fn, items, options, keyword=False):
    """The PlanePool.map contract without processes: every plane through a coder of its own."""
    worker = PlaneCoder(_P, _BUNDLE.coding, {n: exact_dwt.ExactTransforms(n, _P["mode"]) for n in _P["transforms"]},
                        _BUNDLE.residual, _BUNDLE.refine)
    assert fn in (encode_plane, decode_plane, encode_group, decode_group)
    for item in list(items):  # all submitted before any result is read, as a pool may
        yield fn(coder=worker, **item, **options) if keyword else fn(item, coder=worker, **options)


@pytest.mark.parametrize("options", [{"quality": 13}, {"quality": None, "max_error": 0},
                                     {"quality": None, "max_error": 3}])
def test_a_plane_map_gives_the_same_stream_and_pixels(options):
    image = _ultrasound(frames=11, seed=2)  # more than one group of green-difference frames
    alone = encode_image(image, coder=_CODER, model_id=_ID, **options)
    mapped = encode_image(image, coder=_CODER, model_id=_ID, plane_map=_fake_pool_map, **options)
    assert mapped == alone
    a, _ = decode_image(alone, coder=_CODER)
    b, _ = decode_image(alone, coder=_CODER, plane_map=_fake_pool_map)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    if options["quality"] is None:
        assert _err(image, a) <= options["max_error"]


def test_a_real_pool_gives_the_same_stream():
    from edge_runtime.pool import PlanePool

    bundle, coder = runtime.load_codec(None)
    image = _ultrasound(frames=3, seed=4)
    alone = encode_image(image, coder=coder, model_id=bundle.model_id, quality=None, max_error=2)
    with PlanePool(bundle.path, jobs=2) as pool:
        assert encode_image(image, coder=coder, model_id=bundle.model_id, quality=None, max_error=2,
                            plane_map=pool.map) == alone
        decoded, _ = decode_image(alone, coder=coder, plane_map=pool.map)
    assert _err(image, decoded) <= 2


# ----------------------------------------------------------------------------- the container

def _colour_header(**changes):
    fields = dict(model_id=_ID, rows=5, cols=7, frames=3, samples=3, bits_stored=8, signed=False, dtype="uint8",
                  photometric="RGB", quality=14, max_error=-1, lossless=False, levels=3, tile_rows=4, tile_cols=4,
                  colour=bs.COLOUR_RCT, frame_kinds=[bs.FRAME_COLOUR, bs.FRAME_GREY, bs.FRAME_COLOUR])
    fields.update(changes)
    header = bs.Header(**fields)
    if "norm" not in changes:
        header.norm = [(0, 255) if i == 0 else (-255, 510) for n in header.frame_planes() for i in range(n)]
    return header


def test_colour_header_round_trip_and_layout():
    header = _colour_header()
    tiles = [bytes([i]) * i for i in range(header.n_tiles)]
    stream = bs.pack(header, tiles)
    got, got_tiles, _ = bs.parse(stream)
    assert got == header and got_tiles == tiles and header.planes == 7
    assert int.from_bytes(stream[6:8], "little") & bs.FLAG_COLOUR
    at = 72 + len("RGB")
    assert stream[at:at + 4] == bytes([bs.COLOUR_RCT, 0, 1, 0])
    # the colour block shifts the normalization table by 1 + frames bytes
    assert np.frombuffer(stream[at + 4:at + 4 + 8], "<i4").tolist() == [0, 255]


@pytest.mark.parametrize("changes, message", [
    ({"colour": 3}, "colour transform 3"),
    ({"samples": 1, "photometric": "MONOCHROME2"}, "needs unsigned RGB"),
    ({"frame_kinds": [0, 2, 0]}, "frame kinds"),
    ({"frame_kinds": [0, 0]}, "frame kinds"),
    ({"colour": bs.COLOUR_RCT, "max_error": 2}, "RCT codes lossy or lossless"),
    ({"colour": bs.COLOUR_GREEN_DIFFERENCE, "max_error": 0, "lossless": True}, "max error >= 1"),
    ({"colour": bs.COLOUR_NONE}, "without a colour transform"),
    ({"norm": [(0, 256)] * 7}, "normalization of plane 0"),
    ({"norm": [(0, 255), (-1025, 0), (0, 1)] + [(0, 1)] * 4}, "normalization of plane 1"),
])
def test_bad_colour_headers_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        bs.pack(_colour_header(**changes), [b""] * 21)


def test_corrupt_colour_fields_are_refused_by_the_parser():
    header = _colour_header()
    stream = bytearray(bs.pack(header, [b"x"] * header.n_tiles))
    at = 72 + len("RGB")
    for offset, value, message in ((at, 9, "colour transform 9"), (at + 2, 5, "frame kinds")):
        bad = bytearray(stream)
        bad[offset] = value
        bad[-4:] = zlib.crc32(bytes(bad[:-4])).to_bytes(4, "little")
        with pytest.raises(bs.InvalidBitstreamError, match=message):
            bs.parse(bytes(bad))
    for length in range(at, at + 4):  # cut inside the colour block
        with pytest.raises(bs.InvalidBitstreamError):
            bs.parse(bytes(stream[:length]))


def test_rgb_streams_of_earlier_releases_still_decode():
    image = _ultrasound(seed=6)
    old = encode_image(image, coder=_CODER, model_id=_ID, quality=None, max_error=0, colour=False)
    header = bs.read_header(old)
    assert header.colour == bs.COLOUR_NONE and int.from_bytes(old[6:8], "little") & bs.FLAG_COLOUR == 0
    out, _ = decode_image(old, coder=_CODER)
    np.testing.assert_array_equal(out.pixels, image.pixels)


# ----------------------------------------------------------------------------- files: RGB and YBR DICOM

@pytest.fixture(scope="module")
def shipped():
    return runtime.load_codec(None)


@pytest.mark.parametrize("options", [{"quality": 16}, {"max_error": 0}, {"max_error": 2}])
def test_rgb_dicom_output_tags(shipped, tmp_path, options):
    from pydicom.data import get_testdata_file

    src = get_testdata_file("SC_rgb_rle.dcm")  # 100x100 RGB secondary capture (pydicom's own test files)
    kcd, out = tmp_path / "rgb.kcd", tmp_path / "rgb.dcm"
    enc = runtime.encode_file(src, kcd, bundle=shipped, **options)
    lossy_or_lossless = options.get("max_error") in (None, 0)
    assert runtime.info(kcd)["colour"] == ("RCT" if lossy_or_lossless else "green difference")
    runtime.decode_file(kcd, out, bundle=shipped)
    ds = pydicom.dcmread(out)
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration) == ("RGB", 3, 0)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (8, 8, 7, 0)
    assert ds.SOPClassUID == pydicom.dcmread(src).SOPClassUID
    original, decoded = read_image(src), read_image(out)
    if "max_error" in options:
        assert _err(original, decoded) <= options["max_error"]
    else:
        assert runtime.psnr(original.pixels, decoded.pixels) > 35 and enc["bpp"] < 3


@pytest.mark.parametrize("name", ["SC_ybr_full_422_uncompressed.dcm", "SC_rgb_dcmtk_+eb+cy+n1.dcm"])
def test_ybr_sources_decode_to_rgb(shipped, tmp_path, name):
    """YBR_FULL and (JPEG) YBR_FULL_422 sources: read as RGB, coded through the colour transform, written as RGB."""
    from pydicom.data import get_testdata_file

    src = get_testdata_file(name)
    assert pydicom.dcmread(src).PhotometricInterpretation.startswith("YBR_FULL")
    kcd, out = tmp_path / "ybr.kcd", tmp_path / "ybr.dcm"
    runtime.encode_file(src, kcd, max_error=0, bundle=shipped)
    runtime.decode_file(kcd, out, bundle=shipped)
    ds = pydicom.dcmread(out)
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration) == ("RGB", 3, 0)
    assert (ds.BitsAllocated, ds.BitsStored) == (8, 8)
    np.testing.assert_array_equal(read_image(out).pixels, read_image(src).pixels)
