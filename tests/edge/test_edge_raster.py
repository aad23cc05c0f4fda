"""Lossless graphics tiles in raster order (edge_runtime.raster): exact round trips, the wavefront order's claim
(every neighbour decoded before), the partition tables, the codec's choice of the tile, and corrupt streams."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from edge_runtime import direct, raster
from edge_runtime.codec import PlaneCoder
from edge_runtime.bundle import default_bundle_path, load_bundle

TABLES = load_bundle(default_bundle_path()).residual.tables  # the residual model's: the escapes may use one


def _checkers(rows, cols, seed=0):
    """Squares of a few values holding checkerboards of 4, 2 and 1 pixels, and isolated dots: a test pattern."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:rows, 0:cols]
    x = np.where((r // 16 + c // 16) % 2, 40, 200)
    inner = (r % 16 >= 4) & (r % 16 < 12) & (c % 16 >= 4) & (c % 16 < 12)  # a square inside each 16x16 block
    scale = np.array([4, 2, 1])[(r // 16 + 2 * (c // 16)) % 3]
    x = np.where(inner, np.where((r // scale + c // scale) % 2, 7, 255), x)
    x[rng.random((rows, cols)) < 0.002] = 99
    return x.astype(np.int64)


SHAPES = [(1, 1), (1, 9), (7, 1), (2, 2), (3, 17), (16, 16), (17, 33), (64, 40), (70, 97)]


@pytest.mark.parametrize("shape", SHAPES)
def test_every_neighbour_is_decoded_on_an_earlier_wavefront(shape):
    p, nb, starts = raster._geometry(shape)
    n = shape[0] * shape[1]
    assert np.array_equal(np.sort(p), np.arange(n))  # every position once
    assert starts[0] == 0 and starts[-1] == n and np.all(np.diff(starts) >= 0)
    wave = np.empty(n + 1, np.int64)
    wave[p] = np.repeat(np.arange(starts.size - 1), np.diff(starts))
    wave[n] = -1  # the first value's neighbours: outside the tile
    mine = np.repeat(np.arange(starts.size - 1), np.diff(starts))
    assert np.all(wave[nb] < mine[None, :])
    assert np.all((nb == n) == (p == 0)[None, :])  # only the first value has no neighbour at all


def test_partition_tables_number_every_partition_of_the_neighbours():
    assert int((raster._CLASSES > 0).sum()) == 203  # the Bell number of 6
    rng = np.random.default_rng(1)
    v = rng.integers(0, 3, (raster.NEIGHBOURS, 5000))
    mask = raster._masks(v)  # a whole tile's way (pair by pair) and a wavefront's (one product): the same masks
    assert v.shape[1] > raster._MASKS_GATHERED
    assert np.array_equal(mask, np.concatenate([raster._masks(v[:, a:a + 1000]) for a in range(0, v.shape[1], 1000)]))
    k = raster._CLASSES[mask]
    assert np.all(k == np.array([len(set(col)) for col in v.T]))
    for rank in range(raster.NEIGHBOURS):  # the holder of each rank is the first neighbour of a value not seen before
        has = rank < k
        holder = raster._FIRST[mask[has], rank]
        held = v[holder, np.flatnonzero(has)]
        earlier = v[:, has][:, :, None] == held[None, :, None]
        for j in range(raster.NEIGHBOURS):
            before = j < holder
            assert not np.any(earlier[j, :, 0] & before)


@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_is_exact_on_graphics_noise_and_constants(shape):
    rng = np.random.default_rng(sum(shape))
    for u in (_checkers(*shape), rng.integers(0, 5, shape), rng.integers(0, 1 << 16, shape), np.full(shape, 3),
              np.zeros(shape, np.int64)):
        top = int(u.max())
        data = raster.encode(u, TABLES)
        assert np.array_equal(raster.decode(data, *shape, top, TABLES), u)
        assert data == raster.encode(u.copy(), TABLES)  # deterministic


def test_escapes_code_values_or_differences_whichever_is_shorter():
    rng = np.random.default_rng(2)
    r, c = np.mgrid[0:48, 0:64]
    smooth = (r * 37 + c * 11 + rng.integers(0, 3, r.shape)).astype(np.int64)  # few repeats: escapes near MED
    scattered = rng.choice(np.array([5, 900, 17, 4000]), r.shape).astype(np.int64)  # 4 values, unrelated to MED
    for u, diff in ((smooth, 1), (scattered, 0)):
        _mask, _rank, esc, pred = raster._symbols(u.ravel(), u.shape)
        assert esc.size and raster._escape_choice(esc, pred, TABLES)[1] == diff
        data = raster.encode(u, TABLES)
        assert np.array_equal(raster.decode(data, *u.shape, int(u.max()), TABLES), u)


def test_graphics_are_smaller_than_the_interpolation_pyramid_and_the_estimate_is_close(exact_coder):
    _, coder = exact_coder
    u = _checkers(96, 128)
    top = int(u.max())
    body = raster.encode(u, TABLES)
    assert len(body) < 0.8 * len(direct.encode(u, coder.residual.tables, 0, top))
    assert abs(raster.estimated_bytes(u, TABLES) - len(body)) < 0.1 * len(body) + 16


def test_the_codec_keeps_a_raster_tile_where_it_is_shorter_in_every_mode(exact_coder, monkeypatch):
    _, coder = exact_coder
    x = _checkers(64, 80)
    for d in (0, 2):  # with a max error, as a lossless tile (LOSSLESS flag)
        tile = coder.encode_bounded(x, 0, 255, d)
        assert tile[0] & 0x1F == PlaneCoder.DIRECT_ACTIVITY
        assert struct.unpack_from("<I", tile, 5)[0] == PlaneCoder.RASTER_FIELD and PlaneCoder.without_base(tile)
        assert bool(tile[0] & PlaneCoder.LOSSLESS) == (d > 0)
        assert np.array_equal(coder.decode_bounded(tile, 64, 80, 0, 255, d), x)
        monkeypatch.setattr(PlaneCoder, "RASTER_GATE", 2.0)
        assert len(tile) < len(coder.encode_bounded(x, 0, 255, d))
        monkeypatch.undo()
    rng = np.random.default_rng(3)
    noisy = rng.integers(0, 255, (40, 40))  # few equal pairs: not even tried
    monkeypatch.setattr(raster, "encode", lambda *a, **k: pytest.fail("raster tried on noise"))
    assert struct.unpack_from("<I", coder.encode_bounded(noisy, 0, 255, 0), 5)[0] != PlaneCoder.RASTER_FIELD


def test_inconsistent_or_corrupt_raster_tiles_are_refused(exact_coder):
    _, coder = exact_coder
    x = _checkers(64, 80, seed=5)
    tile = coder.encode_bounded(x, 0, 255, 0)
    assert struct.unpack_from("<I", tile, 5)[0] == PlaneCoder.RASTER_FIELD
    with pytest.raises(ValueError, match="inconsistent"):  # a raster tile is lossless: not under a max error
        coder.decode_bounded(bytes([tile[0] & ~PlaneCoder.LOSSLESS]) + tile[1:], 64, 80, 0, 255, 3)
    with pytest.raises(ValueError, match="at most"):
        raster.decode(tile[9:], 1 << 12, 1 << 11, 255, TABLES)
    body = tile[9:]
    rng = np.random.default_rng(0)
    for i in range(300):  # corrupt words: values in range or an error decode_plane reports; nothing else
        bad = bytearray(body)
        for _ in range(1 + i % 4):
            bad[int(rng.integers(0, len(bad)))] = int(rng.integers(0, 256))
        if i % 5 == 0:
            bad = bad[:4 * int(rng.integers(0, len(bad) // 4 + 1))]
        try:
            y = raster.decode(bytes(bad), 64, 80, 255, TABLES)
        except (ValueError, AssertionError):  # constriction's word for exhausted or inconsistent data: AssertionError
            continue
        assert y.shape == x.shape and 0 <= y.min() and y.max() <= 255
