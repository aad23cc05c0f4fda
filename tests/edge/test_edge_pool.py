"""Multi-frame images through worker processes: the same bytes and pixels as in one process."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from data.image import Image, InvalidImageError
from edge_runtime import bitstream as bs
from edge_runtime.codec import decode_image, encode_image
from edge_runtime.pool import MIN_PLANES, PlanePool, default_jobs
from edge_runtime.runtime import load_codec


def _cine(frames=10, rows=40, cols=56) -> Image:
    rng = np.random.default_rng(5)
    r, c = np.mgrid[0:rows, 0:cols]
    base = 300 + 20 * r + 9 * c
    pixels = np.stack([base + 40 * f + rng.normal(0, 5, (rows, cols)) for f in range(frames)])
    return Image(pixels=np.clip(np.round(pixels), 0, 4095).astype(np.uint16)[..., None], bits_stored=12,
                 signed=False, modality="US")


def test_default_jobs():
    assert default_jobs(1) == 1 and default_jobs(MIN_PLANES - 1) == 1
    assert 1 <= default_jobs(360)


def test_plane_pool_gives_the_same_stream_and_pixels():
    bundle, coder = load_codec(None)  # the shipped bundle: it has the residual model of --max-error
    image = _cine()
    for options in ({"quality": 12}, {"quality": None, "max_error": 1}):
        alone = encode_image(image, coder=coder, model_id=bundle.model_id, **options)
        with PlanePool(bundle.path, jobs=2) as pool:
            pooled = encode_image(image, coder=coder, model_id=bundle.model_id, plane_map=pool.map, **options)
            assert pooled == alone
            decoded, _ = decode_image(alone, coder=coder, plane_map=pool.map)
        assert np.array_equal(decoded.pixels, decode_image(alone, coder=coder)[0].pixels)
    assert np.abs(decoded.pixels.astype(int) - image.pixels.astype(int)).max() <= 1


def test_a_corrupt_tile_in_a_worker_is_reported(bundle_path, codec):
    bundle, coder = codec
    data = encode_image(_cine(), coder=coder, model_id=bundle.model_id, quality=12)
    header, tiles, meta = bs.parse(data)
    tiles[7] = tiles[7][:3]  # shorter than a subband stream header
    with PlanePool(bundle_path, jobs=2) as pool, pytest.raises(bs.InvalidBitstreamError, match="tile 7"):
        decode_image(bs.pack(header, tiles, meta), coder=coder, plane_map=pool.map, source="x.kcd")


def test_domain_errors_survive_pickling():
    e = pickle.loads(pickle.dumps(bs.InvalidBitstreamError("a.kcd", "tile 3 does not decode")))
    assert str(e) == "a.kcd: tile 3 does not decode" and e.problem == "tile 3 does not decode"
    e = pickle.loads(pickle.dumps(InvalidImageError("b.dcm", "truncated")))
    assert str(e) == "b.dcm: truncated" and e.path == "b.dcm"
