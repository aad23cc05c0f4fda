"""A multi-frame DICOM is encoded a group of frames at a time (edge_runtime.frames): its frames are decoded
as groups need them, to the same pixels and the same stream as decoding the file whole."""
from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from data.readers import read_image
from edge_runtime import frames, runtime
from edge_runtime.codec import encode_image
from test_edge_group_option import cine  # noqa: F401 (a fixture)
from test_edge_series import bounded_bundle  # noqa: F401 (a fixture)

MULTI = ["emri_small.dcm", "examples_ybr_color.dcm", "SC_rgb_rle_2frame.dcm", "eCT_Supplemental.dcm"]


@pytest.mark.parametrize("name", MULTI)
def test_frames_decoded_one_by_one_are_the_whole_decode(name):
    path = get_testdata_file(name)
    whole, lazy = read_image(path), frames.read_for_encode(path)
    assert isinstance(lazy.pixels, frames.FrameStack)
    assert lazy.pixels.shape == whole.pixels.shape and lazy.pixels.dtype == whole.pixels.dtype
    assert np.array_equal(np.asarray(lazy.pixels), whole.pixels)
    assert np.array_equal(lazy.pixels[1:3, :, :, 0], whole.pixels[1:3, :, :, 0])
    assert np.array_equal(lazy.pixels[-1], whole.pixels[-1])
    for field in ("bits_stored", "signed", "photometric", "rescale_slope", "rescale_intercept", "modality"):
        assert getattr(lazy, field) == getattr(whole, field), field


@pytest.mark.parametrize("name", ["CT_small.dcm", "examples_palette.dcm"])
def test_single_frames_and_palettes_are_read_whole(name):
    image = frames.read_for_encode(get_testdata_file(name))
    assert isinstance(image.pixels, np.ndarray)
    assert np.array_equal(image.pixels, read_image(get_testdata_file(name)).pixels)


class _Watched(frames.FrameStack):
    asked: list = []

    def __getitem__(self, key):
        first = key[0] if isinstance(key, tuple) else key
        _Watched.asked.append(len(range(*first.indices(len(self)))) if isinstance(first, slice) else 1)
        return super().__getitem__(key)

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole image was decoded at once")


@pytest.mark.parametrize("mode", [{"quality": 10}, {"quality": None, "max_error": 2}])
def test_a_multi_frame_encode_holds_one_group_and_writes_the_same_stream(tmp_path, bounded_bundle, monkeypatch,
                                                                        mode, cine):
    path = cine  # 6 frames: groups of 4 and 2
    monkeypatch.setattr(frames, "FrameStack", _Watched)
    _Watched.asked = []
    out = tmp_path / "a.kcd"
    runtime.encode_file(path, out, bundle=bounded_bundle, jobs=1, group=4, **mode)
    assert _Watched.asked and max(_Watched.asked) <= 4
    monkeypatch.undo()
    whole = read_image(path)
    bundle, coder = runtime.load_codec(bounded_bundle)
    again = encode_image(whole, coder=coder, model_id=bundle.model_id, metadata=runtime.dicom_metadata(whole.dataset),
                         group=4, tile=int(bundle.manifest.get("tile", 2048)), **mode)
    assert out.read_bytes() == again


def test_any_other_index_reads_every_frame():
    path = get_testdata_file("emri_small.dcm")
    whole, lazy = read_image(path), frames.read_for_encode(path)
    assert np.array_equal(lazy.pixels[..., 0], whole.pixels[..., 0])
    assert np.array_equal(lazy.pixels[[0, 3]], whole.pixels[[0, 3]])


def test_frame_by_frame_coding_of_a_padded_multi_frame_file(tmp_path, bundle_path, cine):
    """--group 1 (every frame on its own) with Pixel Padding Value on a file read frame by frame."""
    import pydicom

    ds = pydicom.dcmread(cine)
    px = ds.pixel_array.copy()
    px[:, :4] = 0
    ds.PixelData = px.tobytes()
    ds.add_new(0x00280120, "US", 0)
    src = tmp_path / "padded.dcm"
    ds.save_as(src, enforce_file_format=True)
    out = tmp_path / "p.kcd"
    runtime.encode_file(src, out, quality=10, bundle=bundle_path, jobs=1, group=1)
    whole = read_image(src)
    bundle, coder = runtime.load_codec(bundle_path)
    again = encode_image(whole, coder=coder, model_id=bundle.model_id, quality=10, inter=False,
                         metadata=runtime.dicom_metadata(whole.dataset), padding=runtime.pixel_padding(whole),
                         tile=int(bundle.manifest.get("tile", 2048)))
    assert out.read_bytes() == again
