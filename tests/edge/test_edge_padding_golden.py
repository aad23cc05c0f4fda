"""Golden padding streams (container flag bit 5): a 96x96 crop of pydicom-data's 693_UNCR.dcm at the edge of its
reconstruction circle (Pixel Padding Value -2000 outside it), coded at quality 12 and with max error 2, written on the
workstation with the shipped bundle. Like the other golden streams they must decode to the recorded pixels, padding
exact, with both kernels in every venv and every later release; rewritten only on purpose:
KCD_REGENERATE_PADDING_GOLDEN=1 .venv/bin/python -m pytest tests/edge/test_edge_padding_golden.py
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data.image import Image
from edge_runtime.codec import decode_image, encode_image
from edge_runtime.runtime import load_codec

from _golden import GOLDEN, digest, shipped_spec

SPEC_PATH = GOLDEN / "padding_streams.json"
STREAMS = {"ct693_crop_q12_padding.kcd": {"quality": 12},
           "ct693_crop_d2_padding.kcd": {"quality": None, "max_error": 2}}
CROP = (40, 40)  # (row, col) of the 96x96 crop: the top left edge of the field of view, 2,596 padding pixels
PADDING = (-2000, -2000)


def _source() -> Image:
    from pydicom.data import get_testdata_file

    from data.readers import read_image

    r, c = CROP
    px = read_image(get_testdata_file("693_UNCR.dcm")).pixels[:, r:r + 96, c:c + 96]
    return Image(pixels=np.ascontiguousarray(px), bits_stored=16, signed=True, modality="CT")


@pytest.mark.skipif(not os.environ.get("KCD_REGENERATE_PADDING_GOLDEN"), reason="rewrites the golden padding streams")
def test_regenerate_golden_padding_streams():
    bundle, coder = load_codec(None)
    image = _source()
    spec = {"model_id": bundle.model_id.hex(), "source": f"693_UNCR.dcm (pydicom-data), 96x96 crop at {CROP}",
            "padding": list(PADDING), "streams": {}}
    for name, options in STREAMS.items():
        data = encode_image(image, coder=coder, model_id=bundle.model_id, padding=PADDING, **options)
        (GOLDEN / name).write_bytes(data)
        out, _ = decode_image(data, coder=coder)
        spec["streams"][name] = {"shape": list(out.pixels.shape), "dtype": out.pixels.dtype.name,
                                 "sha256": digest(out.pixels), "bytes": len(data),
                                 "padding_pixels": int((image.pixels == PADDING[0]).sum())}
    SPEC_PATH.write_text(json.dumps(spec, indent=1) + "\n")


@pytest.fixture(scope="module", params=["xnnpack", "reference"])
def shipped(request):
    return shipped_spec(SPEC_PATH, request.param, "padding")


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_golden_padding_stream_decodes_to_the_recorded_pixels(shipped, name):
    spec, ids, coder = shipped
    want = spec["streams"][name]
    image, header = decode_image((GOLDEN / name).read_bytes(), coder=coder, model_ids=ids)
    assert header.padding == tuple(spec["padding"]) and header.padding_map
    assert list(image.pixels.shape) == want["shape"] and image.pixels.dtype.name == want["dtype"]
    assert digest(image.pixels) == want["sha256"]
    source = _source().pixels
    padded = source == PADDING[0]
    assert int(padded.sum()) == want["padding_pixels"] > 0
    assert np.array_equal(image.pixels[padded], source[padded])
