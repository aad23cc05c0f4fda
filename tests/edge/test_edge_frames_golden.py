"""Golden frame-group streams (container version 2): 4 frames of 64x64 cropped from pydicom-data's 120-frame RGB
cine color3d_jpeg_baseline.dcm (lossy quality 14, RCT; lossless) and 4 frames of its grey multi-frame MR
emri_small.dcm (max error 2), in one group each, written on the workstation with the shipped bundle. Like
tests/golden/edge_streams.json, they must decode to the recorded pixels with both kernels in every venv and every
later release; they are rewritten only on purpose:
KCD_REGENERATE_FRAMES_GOLDEN=1 .venv/bin/python -m pytest tests/edge/test_edge_frames_golden.py
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data.image import Image
from edge_runtime import bitstream as bs
from edge_runtime.codec import decode_frames, decode_image, encode_image
from edge_runtime.runtime import load_codec

from _golden import GOLDEN, digest, shipped_spec

SPEC_PATH = GOLDEN / "frames_streams.json"
STREAMS = {
    "frames_cine_q14.kcd": ("cine", {"quality": 14}),
    "frames_cine_lossless.kcd": ("cine", {"quality": None, "max_error": 0}),
    "frames_emri_d2.kcd": ("emri", {"quality": None, "max_error": 2}),
}
CINE_CROP = (40, 4, 380, 300)  # first frame, frames, row, col of the 64x64 crop: bottom of the sector
EMRI_FRAMES = (0, 4)  # first frame, frames


def _sources() -> dict:
    from pydicom.data import get_testdata_file

    from data.readers import read_image

    f0, n, r, c = CINE_CROP
    cine = read_image(get_testdata_file("color3d_jpeg_baseline.dcm"))
    emri = read_image(get_testdata_file("emri_small.dcm"))
    e0, en = EMRI_FRAMES
    return {"cine": Image(pixels=np.ascontiguousarray(cine.pixels[f0:f0 + n, r:r + 64, c:c + 64]), bits_stored=8,
                          signed=False, photometric="RGB", modality="US"),
            "emri": Image(pixels=np.ascontiguousarray(emri.pixels[e0:e0 + en]), bits_stored=emri.bits_stored,
                          signed=emri.signed, photometric=emri.photometric, modality="MR")}


@pytest.mark.skipif(not os.environ.get("KCD_REGENERATE_FRAMES_GOLDEN"), reason="rewrites the golden frame streams")
def test_regenerate_golden_frame_streams():
    bundle, coder = load_codec(None)
    sources = _sources()
    f0, n, r, c = CINE_CROP
    spec = {"model_id": bundle.model_id.hex(),
            "source": {"cine": f"color3d_jpeg_baseline.dcm (pydicom-data), frames {f0}-{f0 + n - 1}, 64x64 at "
                               f"rows {r}, cols {c}",
                       "emri": f"emri_small.dcm (pydicom-data), frames {EMRI_FRAMES[0]}-{sum(EMRI_FRAMES) - 1}"},
            "streams": {}}
    for name, (src, options) in STREAMS.items():
        image = sources[src]
        data = encode_image(image, coder=coder, model_id=bundle.model_id, **options)
        header = bs.parse(data)[0]
        assert header.version == bs.GROUPS_VERSION and any(header.frame_modes), f"{name}: no predicted frame"
        (GOLDEN / name).write_bytes(data)
        out, _ = decode_image(data, coder=coder)
        err = int(np.abs(out.pixels.astype(int) - image.pixels.astype(int)).max())
        spec["streams"][name] = {"shape": list(out.pixels.shape), "dtype": out.pixels.dtype.name,
                                 "sha256": digest(out.pixels), "max_abs_err": err, "bytes": len(data),
                                 "frame_modes": header.frame_modes, "group": header.group}
    SPEC_PATH.write_text(json.dumps(spec, indent=1) + "\n")


@pytest.fixture(scope="module", params=["xnnpack", "reference"])
def shipped(request):
    return shipped_spec(SPEC_PATH, request.param, "frame")


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_golden_frame_stream_decodes_to_the_recorded_pixels(shipped, name):
    spec, ids, coder = shipped
    want = spec["streams"][name]
    data = (GOLDEN / name).read_bytes()
    image, header = decode_image(data, coder=coder, model_ids=ids)
    assert header.version == bs.GROUPS_VERSION and not header.series
    assert header.frame_modes == want["frame_modes"] and header.group == want["group"]
    assert any(header.frame_modes)  # the stream exercises prediction
    assert list(image.pixels.shape) == want["shape"] and image.pixels.dtype.name == want["dtype"]
    assert digest(image.pixels) == want["sha256"]
    groups = list(decode_frames(data, coder=coder, model_ids=ids))
    assert digest(np.concatenate([g for _, g in groups])) == want["sha256"]
