"""Golden colour streams (container flag bit 3): a 2-frame 64x64 RGB crop of pydicom-data's US1_UNCR.dcm (frame 0
with colour Doppler, frame 1 grey), coded lossy (quality 14, RCT), with max error 2 (green difference) and
losslessly (RCT), written on the workstation with the shipped bundle. Like tests/golden/edge_streams.json, they
must decode to the recorded pixels with both kernels in every venv and every later release; they are rewritten
only on purpose: KCD_REGENERATE_COLOUR_GOLDEN=1 .venv/bin/python -m pytest tests/edge/test_edge_colour_golden.py
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data.image import Image
from edge_runtime import bitstream as bs
from edge_runtime.codec import decode_image, encode_image
from edge_runtime.runtime import load_codec

from _golden import GOLDEN, digest, shipped_spec

SPEC_PATH = GOLDEN / "colour_streams.json"
STREAMS = {
    "us1_crop_q14.kcd": {"quality": 14},
    "us1_crop_d2.kcd": {"quality": None, "max_error": 2},
    "us1_crop_lossless.kcd": {"quality": None, "max_error": 0},
}
CROPS = ((180, 150), (300, 100))  # (row, col) of each frame's 64x64 crop: colour Doppler, then grey speckle


def _source() -> Image:
    from pydicom.data import get_testdata_file

    from data.readers import read_image

    px = read_image(get_testdata_file("US1_UNCR.dcm")).pixels[0]
    frames = np.stack([px[r:r + 64, c:c + 64] for r, c in CROPS])
    return Image(pixels=np.ascontiguousarray(frames), bits_stored=8, signed=False, photometric="RGB", modality="US")


@pytest.mark.skipif(not os.environ.get("KCD_REGENERATE_COLOUR_GOLDEN"), reason="rewrites the golden colour streams")
def test_regenerate_golden_colour_streams():
    bundle, coder = load_codec(None)
    image = _source()
    spec = {"model_id": bundle.model_id.hex(), "source": "US1_UNCR.dcm (pydicom-data), 64x64 crops at "
            + ", ".join(f"rows {r}, cols {c}" for r, c in CROPS), "streams": {}}
    for name, options in STREAMS.items():
        data = encode_image(image, coder=coder, model_id=bundle.model_id, **options)
        (GOLDEN / name).write_bytes(data)
        out, _ = decode_image(data, coder=coder)
        err = int(np.abs(out.pixels.astype(int) - image.pixels.astype(int)).max())
        spec["streams"][name] = {"shape": list(out.pixels.shape), "dtype": out.pixels.dtype.name,
                                 "sha256": digest(out.pixels), "max_abs_err": err, "bytes": len(data)}
    SPEC_PATH.write_text(json.dumps(spec, indent=1) + "\n")


@pytest.fixture(scope="module", params=["xnnpack", "reference"])
def shipped(request):
    return shipped_spec(SPEC_PATH, request.param, "colour")


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_golden_colour_stream_decodes_to_the_recorded_pixels(shipped, name):
    spec, ids, coder = shipped
    want = spec["streams"][name]
    data = (GOLDEN / name).read_bytes()
    image, header = decode_image(data, coder=coder, model_ids=ids)
    assert header.colour == (bs.COLOUR_GREEN_DIFFERENCE if name.endswith("d2.kcd") else bs.COLOUR_RCT)
    assert header.frame_kinds == [bs.FRAME_COLOUR, bs.FRAME_GREY] and header.planes == 4
    assert list(image.pixels.shape) == want["shape"] and image.pixels.dtype.name == want["dtype"]
    assert digest(image.pixels) == want["sha256"]
