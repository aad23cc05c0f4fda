"""Golden stream of a lossless tile in a plane coded with a max error (the quality byte's LOSSLESS bit): a 96x96 crop
of pydicom's SMPTE test pattern mlut_18.dcm with max error 2, written on the workstation with the shipped bundle;
the encoder found the tile shorter coded losslessly (value table) than near-losslessly. Like the other golden
streams it must decode to the recorded pixels with both kernels in every venv and every later release; rewritten
only on purpose: KCD_REGENERATE_LOSSLESS_TILE_GOLDEN=1 .venv/bin/python -m pytest tests/edge/test_edge_lossless_tile_golden.py
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data.image import Image
from edge_runtime import bitstream as bs
from edge_runtime.codec import PlaneCoder, decode_image, encode_image
from edge_runtime.runtime import load_codec

from _golden import GOLDEN, digest, shipped_spec

SPEC_PATH = GOLDEN / "lossless_tile_streams.json"
NAME = "mlut18_crop_d2_lossless_tile.kcd"
CROP = (100, 100)  # (row, col) of the 96x96 crop
MAX_ERROR = 2


def _source() -> Image:
    from pydicom.data import get_testdata_file

    from data.readers import read_image

    image = read_image(get_testdata_file("mlut_18.dcm"))
    r, c = CROP
    return Image(pixels=np.ascontiguousarray(image.pixels[:, r:r + 96, c:c + 96]), bits_stored=image.bits_stored,
                 signed=image.signed, modality=image.modality)


@pytest.mark.skipif(not os.environ.get("KCD_REGENERATE_LOSSLESS_TILE_GOLDEN"),
                    reason="rewrites the golden lossless-tile stream")
def test_regenerate_golden_lossless_tile_stream():
    bundle, coder = load_codec(None)
    data = encode_image(_source(), coder=coder, model_id=bundle.model_id, quality=None, max_error=MAX_ERROR)
    (GOLDEN / NAME).write_bytes(data)
    out, _ = decode_image(data, coder=coder)
    spec = {"model_id": bundle.model_id.hex(), "source": f"mlut_18.dcm (pydicom), 96x96 crop at {CROP}",
            "max_error": MAX_ERROR, "streams": {NAME: {"shape": list(out.pixels.shape), "dtype": out.pixels.dtype.name,
                                                       "sha256": digest(out.pixels), "bytes": len(data)}}}
    SPEC_PATH.write_text(json.dumps(spec, indent=1) + "\n")


@pytest.fixture(scope="module", params=["xnnpack", "reference"])
def shipped(request):
    return shipped_spec(SPEC_PATH, request.param, "lossless-tile")


def test_golden_lossless_tile_stream_decodes_to_the_recorded_pixels(shipped):
    spec, ids, coder = shipped
    want = spec["streams"][NAME]
    data = (GOLDEN / NAME).read_bytes()
    _, tiles, _ = bs.parse(data)
    assert tiles[0][0] & PlaneCoder.LOSSLESS  # the stream exercises the flag
    image, _ = decode_image(data, coder=coder, model_ids=ids)
    assert list(image.pixels.shape) == want["shape"] and image.pixels.dtype.name == want["dtype"]
    assert digest(image.pixels) == want["sha256"]
    assert np.array_equal(image.pixels, _source().pixels)  # lossless although coded with a max error
