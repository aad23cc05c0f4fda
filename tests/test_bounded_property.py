"""Property test of the max-error mode (hypothesis): any image, any bit depth and signedness, any D — every
decoded pixel within D of the original, D = 0 bit-exact."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from data.image import Image
from edge_runtime import exact_dwt
from edge_runtime.bundle import default_bundle_path, load_bundle
from edge_runtime.codec import PlaneCoder, decode_image, encode_image

_BUNDLE = load_bundle(default_bundle_path())
_P = _BUNDLE.manifest["codec"]
# numpy analysis (any size, no TFLite); the base decodes through the shipped refinement's integer network
_CODER = PlaneCoder(_P, _BUNDLE.coding, {n: exact_dwt.ExactTransforms(n, _P["mode"]) for n in _P["transforms"]},
                    _BUNDLE.residual, _BUNDLE.refine)


@st.composite
def images(draw):
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.int8, np.int16]))
    signed = np.dtype(dtype).kind == "i"
    bits = draw(st.integers(1, 8 * np.dtype(dtype).itemsize))
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    rows, cols = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["noise", "smooth", "flat", "few", "blocks"]))
    if kind == "noise":
        x = rng.integers(lo, hi + 1, (rows, cols))
    elif kind == "smooth":
        r, c = np.mgrid[0:rows, 0:cols]
        x = (lo + hi) / 2 + (hi - lo) / 3 * np.sin(r / 5.0 + c / 7.0) + rng.normal(0, 2, (rows, cols))
    elif kind == "flat":
        x = np.full((rows, cols), draw(st.integers(lo, hi)))
    elif kind == "few":
        x = rng.choice(rng.integers(lo, hi + 1, 5), (rows, cols))
    else:  # graphics: rectangles of a few values and some dots (tiles in raster order, edge_runtime.raster)
        r, c = np.mgrid[0:rows, 0:cols]
        x = rng.integers(lo, hi + 1, 4)[(r // int(rng.integers(1, 9)) + c // int(rng.integers(1, 9))) % 4]
        x[rng.random((rows, cols)) < 0.02] = rng.integers(lo, hi + 1)
    pixels = np.clip(np.round(x), lo, hi).astype(dtype)[None, :, :, None]
    return Image(pixels=pixels, bits_stored=bits, signed=signed)


@settings(max_examples=150, deadline=None)
@given(image=images(), d=st.integers(0, 300), q=st.one_of(st.none(), st.integers(1, 30)))
def test_every_pixel_within_the_bound(image, d, q):
    data = encode_image(image, coder=_CODER, model_id=_BUNDLE.model_id, quality=q, max_error=d)
    out, header = decode_image(data, coder=_CODER, model_ids=[_BUNDLE.model_id])
    err = np.abs(out.pixels.astype(np.int64) - image.pixels.astype(np.int64)).max()
    assert err <= d and out.pixels.dtype == image.pixels.dtype
    assert header.lossless == (d == 0) and header.max_error == d


_FIXED = PlaneCoder(_P, _BUNDLE.coding, _CODER.transforms, _BUNDLE.residual, _BUNDLE.refine, adaptive=False)


@settings(max_examples=60, deadline=None)
@given(image=images(), d=st.integers(0, 40))
def test_adaptive_and_fixed_table_streams_both_keep_the_bound(image, d):
    """The adaptive residual (the default) and the fixed-table stream of earlier releases: every pixel
    within D, whichever coder decodes (the tile's flag picks the residual stream)."""
    x = image.pixels.astype(np.int64)
    for writer in (_CODER, _FIXED):
        data = encode_image(image, coder=writer, model_id=_BUNDLE.model_id, quality=None, max_error=d)
        for reader in (_CODER, _FIXED):
            out, _ = decode_image(data, coder=reader, model_ids=[_BUNDLE.model_id])
            assert np.abs(out.pixels.astype(np.int64) - x).max() <= d


@settings(max_examples=80, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), d=st.integers(0, 20), seed=st.integers(0, 2 ** 32 - 1),
       spread=st.sampled_from([0, 1, 30, 5000, 70000]))
def test_adaptive_residual_symbols_round_trip(rows, cols, d, seed, spread):
    from edge_runtime import residual as res

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 1 + spread, (rows, cols))
    e = res.quantize(rng.integers(-spread, spread + 1, (rows, cols)), d)
    data = res.encode_residual_adaptive(e, base, d, _BUNDLE.residual)
    assert np.array_equal(res.decode_residual_adaptive(data, base, d, _BUNDLE.residual), e)
