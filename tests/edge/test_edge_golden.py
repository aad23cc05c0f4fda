"""Streams written on the workstation decode to the same pixels everywhere: with XNNPACK and the
reference kernels, on every Python and numpy the edge supports, and in every later release."""
from __future__ import annotations

import json

import numpy as np
import pytest

from _golden import GOLDEN, digest, shipped_spec
from edge_runtime.codec import decode_image
from edge_runtime.runtime import load_codec

SPEC = json.loads((GOLDEN / "edge_streams.json").read_text())


@pytest.fixture(scope="module", params=["xnnpack", "reference"])
def shipped(request):
    """(model ids, coder on these kernels) of the shipped bundle that wrote the golden streams."""
    _spec, ids, coder = shipped_spec(GOLDEN / "edge_streams.json", request.param, "edge")
    return ids, coder


@pytest.mark.parametrize("name", sorted(SPEC["streams"]))
def test_golden_stream_decodes_to_the_recorded_pixels(shipped, name):
    model_ids, coder = shipped
    want = SPEC["streams"][name]
    image, header = decode_image((GOLDEN / name).read_bytes(), coder=coder, model_ids=model_ids)
    px = image.pixels
    assert list(px.shape) == want["shape"] and px.dtype.name == want["dtype"]
    assert digest(px) == want["sha256"]


def test_xnnpack_is_applied_when_asked_and_not_otherwise():
    """The int8 post-filter really runs through the XNNPACK delegate with kernels="xnnpack" (checked in
    the interpreter's execution plan), and on TFLite's own kernels with "reference"."""
    for kernels, expected in (("xnnpack", True), ("reference", False)):
        _bundle, coder = load_codec(None, kernels=kernels)
        pf = coder.transforms["cdf97"].postfilter
        pf(np.zeros((32, 32), np.float32), 0.01)
        assert pf.delegated() is expected, kernels


@pytest.mark.parametrize("rows", [5, 37, 100])
def test_post_filter_strips_give_the_whole_plane_result(rows):
    """The int8 post-filter run in strips of equal windows (halo above and below) is the same bits as one run."""
    _bundle, coder = load_codec(None)
    pf = coder.transforms["cdf97"].postfilter
    rng = np.random.default_rng(rows)
    plane = (np.cumsum(rng.normal(0, 0.01, (rows, 48)), axis=0) + rng.normal(0, 0.002, (rows, 48))).astype(np.float32)
    whole = pf(plane, 0.01, strip=10 ** 6)
    for strip in (1, 7, 16, 33):
        assert np.array_equal(pf(plane, 0.01, strip=strip), whole), strip
