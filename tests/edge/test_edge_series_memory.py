"""A series is coded a group at a time: its volume is read slice by slice as groups need it
(edge_runtime.series.SliceStack), and the padding map is written and read group by group
(edge_runtime.padding.MapWriter / PaddingMap), with the same bytes as coding it whole."""
from __future__ import annotations

import zlib

import numpy as np
import pydicom
import pytest

from data.image import Image, InvalidImageError
from edge_runtime import padding as pad
from edge_runtime import series
from edge_runtime.cli import main
from edge_runtime.codec import encode_image
from test_edge_series import bounded_bundle, make_series  # noqa: F401 (a fixture)


def _padded(frames: int, rows: int, cols: int, seed: int = 0, limit: bool = False) -> tuple:
    rng = np.random.default_rng(seed)
    px = rng.integers(-1000, 3000, (frames, rows, cols, 1)).astype(np.int16)
    mask = rng.random((frames, rows, cols)) < 0.3
    mask[1] = False  # a frame without padding
    px[..., 0][mask] = rng.integers(-2000, -1990, int(mask.sum())) if limit else -2000
    return px, (-2000, -1990 if limit else -2000)


@pytest.mark.parametrize("rows, cols, limit", [(7, 9, False), (7, 9, True), (8, 16, True), (1, 3, False)])
@pytest.mark.parametrize("split", [1, 2, 3])
def test_the_map_written_by_groups_is_the_map_written_whole(rows, cols, limit, split):
    px, padding = _padded(7, rows, cols, limit=limit)
    mask = pad.mask_of(px, padding)
    whole = pad.pack(px, mask, padding)
    old = zlib.compress(np.packbits(mask.ravel()).tobytes()
                        + (px[..., 0][mask].astype(np.int64) - min(padding)).astype("<u4").tobytes(), 9)
    assert whole == old  # the payload layout of the module docstring
    writer = pad.MapWriter(padding)
    for g in range(0, 7, split):
        writer.add(px[g:g + split], mask[g:g + split])
    assert writer.payload() == whole


def test_no_padding_pixel_means_no_map():
    px = np.zeros((3, 4, 4, 1), np.int16)
    writer = pad.MapWriter((-2000, -2000))
    writer.add(px, pad.mask_of(px, (-2000, -2000)))
    assert writer.payload() is None


def test_the_map_reads_any_frame_range_in_any_order():
    px, padding = _padded(9, 5, 11, seed=3, limit=True)
    mask = pad.mask_of(px, padding)
    m = pad.unpack(pad.pack(px, mask, padding), padding, 9, 5, 11)
    assert np.array_equal(m.mask, mask)
    for first, n in [(0, 3), (3, 3), (6, 3), (2, 1), (0, 9), (8, 1), (4, 0), (1, 5)]:
        assert np.array_equal(m.frame_mask(first, n), mask[first:first + n])
        assert np.array_equal(m.frame_values(first, n), px[first:first + n, ..., 0][mask[first:first + n]])


@pytest.mark.parametrize("damage", ["short", "long", "value"])
def test_a_damaged_map_is_refused_whole_before_any_frame(damage):
    px, padding = _padded(4, 6, 6, seed=1, limit=True)
    mask = pad.mask_of(px, padding)
    raw = np.packbits(mask.ravel()).tobytes() + (px[..., 0][mask].astype(np.int64) + 2000).astype("<u4").tobytes()
    raw = {"short": raw[:-4], "long": raw + b"\0\0\0\0", "value": raw[:-4] + (11).to_bytes(4, "little")}[damage]
    with pytest.raises(ValueError, match="padding map"):
        pad.unpack(zlib.compress(raw, 9), padding, 4, 6, 6)


class _Watched(series.SliceStack):
    """A SliceStack that records the frame ranges asked for and refuses to be read whole."""

    asked: list = []

    def __getitem__(self, key):
        first = key[0] if isinstance(key, tuple) else key
        n = len(range(*first.indices(len(self)))) if isinstance(first, slice) else 1
        _Watched.asked.append(n)
        return super().__getitem__(key)

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole series was read at once")


@pytest.mark.parametrize("mode", [["-q", "6"], ["--max-error", "2"], ["--target-psnr", "40"]])
def test_a_series_encode_holds_one_group_of_slices(tmp_path, bounded_bundle, monkeypatch, mode):
    bundle_path = bounded_bundle
    made = make_series(tmp_path / "s", n=11)
    for name, _ in made:  # padding in every slice: the map is written group by group too
        ds = pydicom.dcmread(tmp_path / "s" / name)
        px = ds.pixel_array.copy()
        px[:3] = -2000
        ds.PixelData = px.tobytes()
        ds.add_new(0x00280120, "SS", -2000)
        ds.save_as(tmp_path / "s" / name, enforce_file_format=True)
    monkeypatch.setattr(series, "SliceStack", _Watched)
    _Watched.asked = []
    kcd = tmp_path / "s.kcd"
    assert main(["encode", "--series", str(tmp_path / "s"), str(kcd), "--group", "4", "--jobs", "1",
                 "--bundle", str(bundle_path)] + mode) == 0
    assert _Watched.asked and max(_Watched.asked) <= 4
    # the same bytes as coding the volume held whole
    monkeypatch.undo()
    s = series.read_series(tmp_path / "s")
    assert isinstance(s.image.pixels, series.SliceStack)
    whole = np.asarray(s.image.pixels)
    out = tmp_path / "whole"
    assert main(["decode", str(kcd), str(out), "--bundle", str(bundle_path)]) == 0
    for name, _ in made:
        got = pydicom.dcmread(next(out.glob(name.split(".")[0] + "*"))).pixel_array
        assert (got[:3] == -2000).all()
    if mode[0] == "-q":
        from edge_runtime import runtime

        b, coder = runtime.load_codec(bundle_path)
        held = Image(pixels=whole, bits_stored=s.image.bits_stored, signed=s.image.signed)
        from edge_runtime.bitstream import parse

        _, _, metadata = parse(kcd.read_bytes())
        again = encode_image(held, coder=coder, model_id=b.model_id, quality=6, metadata=metadata, series=True,
                             group=4, padding=s.padding, tile=int(b.manifest.get("tile", 2048)))
        assert again == kcd.read_bytes()


def test_a_slice_changed_after_reading_is_refused_and_nothing_written(tmp_path, bundle_path):
    made = make_series(tmp_path / "s", n=5)
    s = series.read_series(tmp_path / "s")
    name = s.names[3]
    ds = pydicom.dcmread(tmp_path / "s" / name)
    ds.Rows = 16
    ds.PixelData = ds.PixelData[:16 * 32 * 2]
    ds.save_as(tmp_path / "s" / name, enforce_file_format=True)
    with pytest.raises(InvalidImageError, match=name):
        s.image.pixels[2:5]
    assert len(made) == 5
