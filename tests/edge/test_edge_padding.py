"""Pixel Padding Value (edge_runtime.padding, container flag bit 5): padding pixels decode exactly in every mode."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from data.image import Image
from data.readers import read_image
from edge_runtime import bitstream as bs
from edge_runtime import padding as pad
from edge_runtime import runtime, series
from edge_runtime.codec import decode_frames, decode_image, encode_image


@pytest.fixture(scope="module")
def shipped():
    return runtime.load_codec(None)


def _ct_with_padding(frames=1, rows=48, cols=56, seed=0, limit=None) -> Image:
    """A disc of tissue (noisy, around -1000..1000) inside padding (-2000, or values in [-2000, limit])."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:rows, 0:cols]
    inside = (r - rows / 2) ** 2 + (c - cols / 2) ** 2 < (min(rows, cols) / 2.3) ** 2
    out = []
    for f in range(frames):
        x = -900 + 40 * f + 700 * np.sin(r / 5.0) * np.cos(c / 4.0) + rng.normal(0, 25, (rows, cols))
        outside = -2000 if limit is None else rng.integers(-2000, limit + 1, (rows, cols))
        out.append(np.where(inside, np.round(x), outside))
    return Image(pixels=np.stack(out).astype(np.int16)[..., None], bits_stored=16, signed=True, modality="CT")


def _check(image, decoded, padding, max_error=None):
    mask = pad.mask_of(image.pixels, padding)
    assert mask.any()
    assert np.array_equal(decoded.pixels[..., 0][mask], image.pixels[..., 0][mask])  # padding exact
    err = np.abs(decoded.pixels.astype(np.int64) - image.pixels.astype(np.int64)).max()
    if max_error is not None:
        assert err <= max_error
    else:  # lossy: no image pixel decodes into the padding range
        assert not pad.mask_of(decoded.pixels, padding)[~mask].any()


@pytest.mark.parametrize("mode", [dict(quality=8), dict(quality=16), dict(max_error=2), dict(max_error=5)])
def test_padding_comes_back_exactly(shipped, mode):
    bundle, coder = shipped
    image = _ct_with_padding()
    data = encode_image(image, coder=coder, model_id=bundle.model_id, padding=(-2000, -2000), **{"quality": None, **mode})
    header = bs.parse(data)[0]
    assert header.padding == (-2000, -2000) and header.padding_map
    decoded, _ = decode_image(data, coder=coder)
    _check(image, decoded, (-2000, -2000), mode.get("max_error"))
    if "quality" in mode:  # without the map the padding drifts at these levels: what the map is for
        plain, _ = decode_image(encode_image(image, coder=coder, model_id=bundle.model_id, **mode), coder=coder)
        assert (plain.pixels[..., 0][image.pixels[..., 0] == -2000] != -2000).any()


def test_a_range_limit_keeps_every_value_in_it(shipped):
    bundle, coder = shipped
    image = _ct_with_padding(limit=-1990)
    data = encode_image(image, coder=coder, model_id=bundle.model_id, quality=10, padding=(-2000, -1990))
    decoded, _ = decode_image(data, coder=coder)
    _check(image, decoded, (-2000, -1990))


@pytest.mark.parametrize("mode", [dict(quality=12), dict(max_error=3)])
def test_frame_groups_keep_padding_group_by_group(shipped, mode):
    bundle, coder = shipped
    image = _ct_with_padding(frames=5)
    data = encode_image(image, coder=coder, model_id=bundle.model_id, group=3, padding=(-2000, -2000), **{"quality": None, **mode})
    header = bs.parse(data)[0]
    assert header.version == bs.GROUPS_VERSION and header.padding is not None
    decoded, _ = decode_image(data, coder=coder)
    _check(image, decoded, (-2000, -2000), mode.get("max_error"))
    for first, frames in decode_frames(data, coder=coder):
        assert np.array_equal(frames, decoded.pixels[first:first + len(frames)])


def test_lossless_needs_no_map(shipped):
    bundle, coder = shipped
    image = _ct_with_padding()
    kw = dict(coder=coder, model_id=bundle.model_id, quality=None, max_error=0)
    assert encode_image(image, padding=(-2000, -2000), **kw) == encode_image(image, **kw)


def test_the_real_ct_file_through_encode_and_decode_file(tmp_path):
    src = get_testdata_file("693_UNCR.dcm")
    original = pydicom.dcmread(src).pixel_array
    mask = original == -2000
    for mode in (dict(quality=12), dict(max_error=2)):
        kcd, out = tmp_path / "x.kcd", tmp_path / "x.dcm"
        runtime.encode_file(src, kcd, force=True, **mode)
        runtime.decode_file(kcd, out, force=True)
        decoded = pydicom.dcmread(out).pixel_array
        assert np.array_equal(decoded[mask], original[mask]) and not (decoded[~mask] == -2000).any()
    assert runtime.pixel_padding(read_image(src)) == (-2000, -2000)


def test_damaged_maps_and_fields_are_refused(shipped):
    bundle, coder = shipped
    image = _ct_with_padding()
    data = encode_image(image, coder=coder, model_id=bundle.model_id, quality=12, padding=(-2000, -2000))
    header, tiles, meta = bs.parse(data)
    for payload in (b"", header.padding_map[:-3], b"not zlib", pad.pack(image.pixels[:, :-1], np.ones((1, 47, 56), bool),
                                                                      (-2000, -2000))):
        header.padding_map = payload
        with pytest.raises(bs.InvalidBitstreamError, match="padding map"):
            decode_image(bs.pack(header, tiles, meta), coder=coder)
    header.padding = (-2000, 40000)  # outside int16
    with pytest.raises(bs.InvalidBitstreamError, match="padding value"):
        bs.parse(bs.pack(header, tiles, meta))


def test_map_round_trip_and_fill():
    image = _ct_with_padding(frames=2, limit=-1995)
    mask = pad.mask_of(image.pixels, (-2000, -1995))
    m = pad.unpack(pad.pack(image.pixels, mask, (-2000, -1995)), (-2000, -1995), 2, 48, 56)
    assert np.array_equal(m.mask, mask) and np.array_equal(m.values, image.pixels[..., 0][mask])
    filled = pad.fill(image.pixels, mask)
    assert np.array_equal(filled[..., 0][~mask], image.pixels[..., 0][~mask])
    assert filled[..., 0][mask].min() > -1995  # continued from the image, not the padding step


def test_a_series_keeps_the_padding_of_its_slices(tmp_path, bundle_path):
    from edge_runtime.cli import main
    from test_edge_series import make_series

    made = make_series(tmp_path / "s", n=4)
    for name, _ in made:
        ds = pydicom.dcmread(tmp_path / "s" / name)
        px = ds.pixel_array.copy()
        r, c = np.mgrid[0:px.shape[0], 0:px.shape[1]]
        px[r + c < 12] = -2000
        ds.PixelData = px.tobytes()
        ds.add_new(0x00280120, "SS", -2000)
        ds.save_as(tmp_path / "s" / name, enforce_file_format=True)
    kcd, out = tmp_path / "s.kcd", tmp_path / "out"
    assert main(["encode", "--series", str(tmp_path / "s"), str(kcd), "-q", "4", "--bundle", str(bundle_path)]) == 0
    assert bs.parse(kcd.read_bytes())[0].padding == (-2000, -2000)
    assert main(["decode", str(kcd), str(out) + "/", "--bundle", str(bundle_path)]) == 0
    for name, _ in made:
        original = pydicom.dcmread(tmp_path / "s" / name).pixel_array
        decoded = pydicom.dcmread(out / series.output_names([name])[0]).pixel_array
        mask = original == -2000
        assert mask.any() and np.array_equal(decoded[mask], original[mask])
        assert not (decoded[~mask] == -2000).any()
