"""Lossless tiles without a base (edge_runtime.direct): the pyramid's geometry, exact round trips, the encoder's choice,
corrupt streams, and a golden stream (tests/golden/README.md; rewritten only with KCD_REGENERATE_DIRECT_GOLDEN=1)."""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from data.image import Image
from edge_runtime import direct, raster
from edge_runtime.codec import BASE_QUALITIES, PlaneCoder, decode_image, encode_image

from _golden import GOLDEN, digest, shipped_spec

SPEC_PATH = GOLDEN / "direct_streams.json"
ACTIVITY_SPEC_PATH = GOLDEN / "direct_activity_streams.json"
HALVES_SPEC_PATH = GOLDEN / "direct_halves_streams.json"
RASTER_SPEC_PATH = GOLDEN / "raster_streams.json"
SPLIT_NAME = "ct693_256_lossless_direct2.kcd"
NAME = "dfl_crop_lossless_direct.kcd"
CROP = (100, 60)  # (row, col) of the 96x96 crop of pydicom's image_dfl.dcm
NEAR_NAME = "ct693_crop_d2_direct.kcd"
NEAR_CROP = (208, 0)  # of pydicom-data's 693_UNCR.dcm: the edge of the field of view, coded with max error 2


def _graphics(rows, cols, seed=0):
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:rows, 0:cols]
    x = np.array([3, 40, 41, 180, 250])[(r // 7 + c // 5) % 5]
    x[rng.random((rows, cols)) < 0.02] = 99  # isolated dots
    return x.astype(np.int64)


@pytest.mark.parametrize("halves", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (2, 2), (3, 17), (16, 16), (17, 33), (31, 8), (40, 65), (70, 97)])
def test_geometry_codes_every_position_once_from_decoded_neighbours(shape, halves):
    lattice, passes = direct._geometry(shape, halves)
    known = np.zeros(shape[0] * shape[1], bool)
    known[lattice] = True
    assert len(passes) == 10 + halves
    for i, (at, neighbours, far) in enumerate(passes):
        assert not known[at].any()  # each position in one pass only
        assert len(neighbours) == 4 and len(far) == (16 if halves and i == len(passes) - 1 else 12)
        for nb in neighbours + far:
            assert nb.min(initial=0) >= 0 and known[nb].all()  # every neighbour decoded before the pass
        r, c = np.divmod(at, shape[1])
        s = direct._pass_step(i)
        assert (r % s == 0).all() and (c % s == 0).all() and ((r // s % 2) | (c // s % 2)).all()
        known[at] = True
    assert known.all()
    if halves and shape[0] > 1 and shape[1] > 2:  # the halves: even rows, then odd rows seeing their diagonals
        (first, *_), (second, _near, far) = passes[-2], passes[-1]
        assert (first // shape[1] % 2 == 0).all() and (second // shape[1] % 2 == 1).all()
        r, c = np.divmod(second, shape[1])
        inner = (r < shape[0] - 1) & (c > 0) & (c < shape[1] - 1)
        want = [(r + dr) * shape[1] + c + dc for dr, dc in direct.DIAGONAL_RING]
        assert all(np.array_equal(f[inner], w[inner]) for f, w in zip(direct._ring(far, True)[8:], want))
        assert direct._ring(far, False) == far[:12] and len(direct._ring(far, True)) == 12


def test_every_prediction_mode_round_trips(exact_coder, monkeypatch):
    _, coder = exact_coder
    rng = np.random.default_rng(4)
    r, c = np.mgrid[0:40, 0:56]
    u = np.round(500 + 200 * np.sin(r / 3) * np.cos(c / 4) + rng.normal(0, 1, r.shape)).astype(np.int64)
    sizes = []
    for mode in range(len(direct.MODES)):  # the encoder forced to each mode in every pass
        monkeypatch.setattr(direct, "_choose_mode", lambda y, nb, fv, pattern, step, top, energy=None, m=mode: (
            m, direct._fit_weights(y, nb, fv, direct.MODES[m][0]) if direct.MODES[m][0] else None, None))
        for d in (0, 2):
            data = direct.encode(u, coder.residual.tables, d, int(u.max()))
            y = direct.decode(data, *u.shape, int(u.max()), coder.residual.tables, d)
            assert np.abs(y - u).max() <= d
        sizes.append(len(direct.encode(u, coder.residual.tables)))
    linear = [n for n, mode in zip(sizes, direct.MODES) if mode[0]]
    assert min(linear) < min(n for n, mode in zip(sizes, direct.MODES) if not mode[0])  # a smooth curved signal


def test_every_activity_measure_round_trips_and_version_1_streams_still_decode(exact_coder, monkeypatch):
    _, coder = exact_coder
    tables = coder.residual.tables
    rng = np.random.default_rng(5)
    r, c = np.mgrid[0:45, 0:61]
    noise = rng.normal(0, 1, r.shape) * np.where(c < 30, 2, 12)  # two noise levels: the mean error tells them apart
    u = np.clip(np.round(400 + 100 * np.sin(r / 5) + noise), 0, None).astype(np.int64)
    top = int(u.max())
    v1 = {d: direct.encode(u, tables, d, top, version=1) for d in (0, 2)}
    chosen = []
    real = direct._choose_activity
    monkeypatch.setattr(direct, "_choose_activity", lambda *a: chosen.append(real(*a)) or chosen[-1])
    v2 = direct.encode(u, tables, 0, top)
    assert len(set(chosen)) > 1  # the noise picks more than one measure across the passes
    assert np.array_equal(direct.decode(v2, *u.shape, top, tables), u)
    for activity in range(len(direct.ACTIVITIES)):  # the encoder forced to each measure in every pass
        monkeypatch.setattr(direct, "_choose_activity", lambda *a, k=activity: k)
        for d in (0, 2):
            data = direct.encode(u, tables, d, top)
            assert np.abs(direct.decode(data, *u.shape, top, tables, d) - u).max() <= d
    for d, data in v1.items():  # version 1 (no activity symbols): what streams written before version 2 hold
        assert np.abs(direct.decode(data, *u.shape, top, tables, d, version=1) - u).max() <= d
    assert direct.encode(u, tables, 0, top, version=1) == v1[0]
    assert PlaneCoder.DIRECT_ACTIVITY not in BASE_QUALITIES and PlaneCoder.DIRECT_ACTIVITY & 0xE0 == 0


def test_halves_round_trip_and_tiles_name_their_version(exact_coder, monkeypatch):
    _, coder = exact_coder
    tables = coder.residual.tables
    rng = np.random.default_rng(8)
    r, c = np.mgrid[0:53, 0:70]
    u = np.clip(np.round(300 + 80 * np.sin(r / 6) * np.cos(c / 9) + rng.normal(0, 4, r.shape)), 0, None).astype(np.int64)
    top = int(u.max())
    for d in (0, 1, 3):
        v2, v3 = (direct.encode(u, tables, d, top, version=v) for v in (direct.ACTIVITY_VERSION, direct.HALVES_VERSION))
        assert v2 != v3
        for version, data in ((direct.ACTIVITY_VERSION, v2), (direct.HALVES_VERSION, v3)):
            y = direct.decode(data, *u.shape, top, tables, d, version=version)
            assert np.abs(y - u).max() <= d and (d or np.array_equal(y, u))
    with pytest.raises(ValueError, match="unknown version 4"):
        direct.decode(v3, *u.shape, top, tables, version=4)
    rings = {}
    for diagonals in (True, False):  # either ring of the second half, as the bit before its mode says
        monkeypatch.setattr(direct, "_diagonals_cheaper", lambda *a, k=diagonals: k)
        rings[diagonals] = direct.encode(u, tables, 2, top)
        assert np.abs(direct.decode(rings[diagonals], *u.shape, top, tables, 2) - u).max() <= 2
    assert rings[True] != rings[False]
    monkeypatch.setattr(direct, "_diagonals_cheaper", lambda *a: pytest.fail("weighed the rings losslessly"))
    assert direct.encode(u, tables, 0, top) == direct.encode(u, tables, 0, top, version=direct.HALVES_VERSION)
    # in a tile stream: a small tile takes the shorter version (PlaneCoder.HALVES_TRIAL_PIXELS), a larger one version
    # 3 where few neighbours are equal (HALVES_GATE); its number in the base length field
    small = coder.encode_bounded(u, 0, top, 0, quality=0)
    bodies = {v: direct.encode(u, tables, 0, top, version=v) for v in (direct.ACTIVITY_VERSION, direct.HALVES_VERSION)}
    shorter = min(bodies, key=lambda v: len(bodies[v]))
    assert small[9:] == bodies[shorter] and struct.unpack_from("<I", small, 5)[0] == (shorter if shorter == 3 else 0)
    monkeypatch.setattr(PlaneCoder, "HALVES_TRIAL_PIXELS", u.size - 1)
    tile = coder.encode_bounded(u, 0, top, 0, quality=0)
    assert tile[0] & 0x1F == PlaneCoder.DIRECT_ACTIVITY and struct.unpack_from("<I", tile, 5)[0] == direct.HALVES_VERSION
    assert np.array_equal(coder.decode_bounded(tile, *u.shape, 0, top, 0), u)
    for n in (1, 2, 5, 1 << 20):  # no other number (4: a raster tile): a decoder of version 2 refuses version 3 tiles so
        with pytest.raises(ValueError, match="inconsistent"):
            coder.decode_bounded(tile[:5] + struct.pack("<I", n) + tile[9:], *u.shape, 0, top, 0)
    with pytest.raises(ValueError, match="inconsistent"):  # version 1 (base quality 0) has no such field
        coder.decode_bounded(bytes([0]) + tile[1:], *u.shape, 0, top, 0)
    monkeypatch.setattr(PlaneCoder, "HALVES_GATE", 0.0)  # version 2, as written before version 3: still decodes
    old = coder.encode_bounded(u, 0, top, 0, quality=0)
    assert struct.unpack_from("<I", old, 5)[0] == 0 and old != tile
    assert np.array_equal(coder.decode_bounded(old, *u.shape, 0, top, 0), u)


def test_split_passes_round_trip(exact_coder, monkeypatch):
    _, coder = exact_coder
    tables = coder.residual.tables
    rng = np.random.default_rng(8)
    r, c = np.mgrid[0:80, 0:96]
    u = np.clip(np.round(300 + 80 * np.sin(r / 6) * np.cos(c / 7) + rng.normal(0, 1, r.shape) * np.where(
        c < 48, 1, 25)), 0, None).astype(np.int64)
    top = int(u.max())
    real = direct._choose_mode

    def split_always(y, nb, fv, pattern, step, top, energy=None):  # every linear pass split at its median error
        mode, weights, split = real(y, nb, fv, pattern, step, top, energy)
        kind = direct.MODES[mode][0]
        if kind and split is None and energy is not None:
            split = (int(np.median(energy)), tuple(-w for w in weights))  # other weights: what the decoder must use
        return mode, weights, split

    monkeypatch.setattr(direct, "_choose_mode", split_always)
    forced = {d: direct.encode(u, tables, d, top) for d in (0, 2)}
    for d, data in forced.items():
        assert np.abs(direct.decode(data, *u.shape, top, tables, d) - u).max() <= d
    monkeypatch.setattr(direct, "_choose_mode", real)
    assert len(direct.encode(u, tables, 0, top)) < len(forced[0])  # the negated weights only cost bits


def test_weighted_least_squares_weigh_each_value():
    rng = np.random.default_rng(2)
    n = 3000
    nb = np.sort(rng.integers(0, 900, (4, n)), axis=0)
    fv = rng.integers(0, 900, (12, n))
    y = (nb[1] + nb[2]) // 2 + rng.integers(-5, 6, n)
    y[::2] = nb[0, ::2] + rng.integers(-40, 41, n // 2)  # every other value follows another rule
    plain = direct._fit_all(y, nb, fv)
    half = np.tile([0.0, 1.0], n // 2)  # weight 0: the even values do not count
    fits = direct._fits(y, nb, fv, (None, np.ones(n), half))
    assert fits[0] == plain and fits[1] == plain
    assert fits[2] == direct._fit_all(y[1::2], nb[:, 1::2], fv[:, 1::2]) != plain


@pytest.mark.parametrize("halves", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (37, 29), (70, 33)])
def test_local_mean_errors_match_their_definition(shape, halves):
    rng = np.random.default_rng(sum(shape))
    rows, cols = shape
    energy = direct._Energy(rows, cols, 50, halves)
    known = np.zeros(shape, bool)  # the values coded so far, but the coarsest lattice's (coded without errors)
    _lattice, passes = direct._geometry(shape, halves)
    for i, (at, _nb, _far) in enumerate(passes):
        s, rad = direct._pass_step(i), direct.ENERGY_RADIUS
        got = energy.mean(i, at)
        err = energy.error.reshape(shape)
        for p, g in zip(at.tolist(), got.tolist()):
            r, c = divmod(p, cols)
            win = np.s_[s * max(0, r // s - rad):r + rad * s + 1:s, s * max(0, c // s - rad):c + rad * s + 1:s]
            n = int(known[win].sum())
            assert g == (int(err[win][known[win]].sum()) // n if n else 0)
        energy.add(at, rng.integers(0, 50, at.size), rng.integers(0, 50, at.size))
        known.reshape(-1)[at] = True


def test_neighbour_ranks_invert_and_name_the_distinct_neighbour_values():
    rng = np.random.default_rng(1)
    u = rng.integers(0, 6, 4000)  # few values: many equal neighbours and many hits
    neighbours = tuple(rng.integers(0, u.size, 500) for _ in range(4))
    nb, fv, _pattern = direct._gather(u, neighbours, neighbours * 3)
    pred, _context, values, distinct = direct._predict(nb, fv, None, 100, False)
    nb = np.stack([u[a] for a in neighbours])
    for i in range(500):
        want = np.unique(nb[:, i])
        assert distinct[i] == want.size and list(values[:want.size, i]) == list(want)
    y = rng.integers(0, 9, 500)
    q, r, plain, ranked_value = direct._ranked(y, pred, values, distinct, 1, 100)
    assert np.array_equal(q, y - pred) and np.array_equal(plain, y) and np.array_equal(ranked_value, y)
    assert r.min() >= 0 and np.array_equal(direct._unranked(r, pred, values, distinct, 1, 100), y)
    hit = (nb == y).any(0)
    assert np.all(r[hit] < distinct[hit]) and np.all(r[~hit] >= distinct[~hit])


@pytest.mark.parametrize("network, n", [(direct._NETWORK_4, 4), (direct._NETWORK_8, 8)])
def test_sorting_networks_sort_every_input(network, n):
    bits = (np.arange(1 << n)[None, :] >> np.arange(n)[:, None]) & 1  # every 0-1 input: every input (0-1 principle)
    rng = np.random.default_rng(n)
    for a in (bits, rng.integers(-5, 5, (n, 3000))):
        want = np.sort(a, axis=0)
        direct._sort_rows(a, network)
        assert np.array_equal(a, want)


def _plan_by_definition(v: np.ndarray, tables, search: int) -> tuple:
    """(sent table's bits, best model table, its bits) of one context's symbols, straight from the module docstring."""
    values, counts = np.unique(v, return_counts=True)
    m, n = len(values), int(counts.sum())
    desc = sum(int(direct.natural_bits(np.array([x]))[0])
               for x in [m - 1, int(direct._zigzag(values[0]))] + list(np.diff(values) - 1))
    sent = 1 + desc
    if m > 1:
        f = direct._frequencies(counts)
        sent += sum(int(direct.natural_bits(np.array([c - 1]))[0]) for c in counts[:-1])
        sent += float(-(counts * np.log2(f / float(1 << direct.PRECISION))).sum())
    spread = float(np.abs(values) @ counts) / n
    k0 = int(np.argmin(np.abs(direct._table_spreads(tables) - spread)))
    ks = range(max(k0 - search, 0), min(k0 + search + 1, tables.num_tables))
    bits = {k: float(tables.symbol_bits(values, np.full(m, k)) @ counts) for k in ks}
    best = min(bits, key=bits.get)
    return sent, best, 1 + np.log2(tables.num_tables) + bits[best]


@pytest.mark.parametrize("search", direct._TABLE_SEARCH)
def test_table_plans_of_a_pass_match_each_contexts_own(exact_coder, search):
    tables = exact_coder[1].residual.tables
    rng = np.random.default_rng(3)
    # contexts of one symbol, of few, of wide Laplacian-like ones, of escapes beyond the model's tails
    segments = [np.full(7, -3), np.array([5]), rng.integers(-2, 3, 40), np.round(rng.laplace(0, 4, 900)),
                np.round(rng.laplace(0, 60, 300)), np.array([0, 0, 0, 1000, -1000]), rng.integers(-9000, 9000, 50)]
    s = np.concatenate(segments).astype(np.int64)
    plans = direct._plans(s, np.array([len(g) for g in segments]), tables, search)
    for g, (bits, sent, table) in zip(segments, plans):
        sent_bits, best, model_bits = _plan_by_definition(g.astype(np.int64), tables, search)
        assert table == best
        assert bits == pytest.approx(min(sent_bits, model_bits), rel=1e-9)
        assert (sent is not None) == (sent_bits <= model_bits)
        if sent is not None:
            values, counts, freqs = sent
            want_values, want_counts = np.unique(g, return_counts=True)
            assert np.array_equal(values, want_values) and np.array_equal(counts, want_counts)
            assert np.array_equal(freqs, direct._frequencies(want_counts))


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (3, 17), (17, 33), (64, 48)])
@pytest.mark.parametrize("kind", ["noise", "smooth", "graphics", "wide"])
def test_round_trip_is_exact(exact_coder, shape, kind):
    _, coder = exact_coder
    rng = np.random.default_rng(sum(shape))
    if kind == "noise":
        u = rng.integers(0, 60, shape)
    elif kind == "smooth":  # a ramp with noise: linear predictions and wide contexts pay
        r, c = np.mgrid[0:shape[0], 0:shape[1]]
        u = np.clip(np.round(300 + 3 * r + 2 * c + rng.normal(0, 4, shape)), 0, None).astype(np.int64)
    elif kind == "graphics":
        u = _graphics(*shape)
    else:  # 16-bit values with large jumps: escapes of the model's tables and wide sent tables
        u = rng.integers(0, 1 << 16, shape) * (rng.random(shape) < 0.5)
    top = int(u.max())
    data = direct.encode(u, coder.residual.tables)
    assert np.array_equal(direct.decode(data, *shape, top, coder.residual.tables), u)


def _check_case(coder, shape, kind: str, version: int):
    """(tile, top, stream, its LosslessCheck) of a lossless direct encode."""
    rng = np.random.default_rng(sum(shape) + version)
    r, c = np.mgrid[0:shape[0], 0:shape[1]]
    if kind == "graphics":
        u = _graphics(*shape)
    elif kind == "ct":  # smooth structure and noise: linear, split and wide modes, every activity measure
        u = np.clip(np.round(900 + 300 * np.sin(r / 9.0) * np.cos(c / 13.0) + rng.normal(0, 12, shape)), 0, 4095)
    else:  # 16-bit values with large jumps: escapes and sent tables
        u = rng.integers(0, 1 << 16, shape) * (rng.random(shape) < 0.5)
    u = u.astype(np.int64)
    top = int(u.max())
    checks = []
    data = direct.encode(u, coder.residual.tables, 0, top, version=version, checks=checks)
    assert data == direct.encode(u, coder.residual.tables, 0, top, version=version)  # the same stream
    assert len(checks) == 1 and checks[0].data is data
    return u, top, data, checks[0]


def _counting_gathers(monkeypatch) -> list:
    """A call per full decode's pass (a check gathers nothing: the encoder's contexts)."""
    gather, calls = direct._gather, []
    monkeypatch.setattr(direct, "_gather", lambda *a, **k: calls.append(1) or gather(*a, **k))
    return calls


@pytest.mark.parametrize("version", [direct.ACTIVITY_VERSION, direct.HALVES_VERSION])
@pytest.mark.parametrize("shape, kind", [((1, 1), "ct"), ((3, 17), "graphics"), ((70, 97), "ct"), ((64, 48), "wide"),
                                         ((160, 144), "ct"), ((96, 80), "graphics")])
def test_a_lossless_check_stands_for_one_decode_of_its_stream(exact_coder, monkeypatch, shape, kind, version):
    """A registered check stands for the next decode of its stream with its tables (a copy of the tile, nothing
    gathered), once: the decode after that decodes the stream, to the same values; another tables object never
    takes it."""
    monkeypatch.setattr(direct, "_CHECKED_KEPT", 3)
    _, coder = exact_coder
    tables = coder.residual.tables
    u, top, data, check = _check_case(coder, shape, kind, version)
    check.register()
    gathers = _counting_gathers(monkeypatch)
    other = direct.EntropyTables(tables.freqs, tables.tails)  # the same tables, another model's object
    assert np.array_equal(direct.decode(data, *shape, top, other, 0, version), u) and (gathers or u.size == 1)
    gathers.clear()
    got = direct.decode(bytes(data), *shape, top, tables, 0, version)
    assert np.array_equal(got, u) and not gathers
    got[...] = 0  # a copy: the tile is untouched
    assert np.array_equal(direct.decode(data, *shape, top, tables, 0, version), u) and (gathers or u.size == 1)


def test_a_lossless_check_refuses_what_would_not_decode_to_the_tile(exact_coder, monkeypatch):
    """A check whose stream, side information or contexts are not the encoder's raises; registered, it stands for
    no decode: the decode decodes the stream in full (the tile again where only the check was wrong)."""
    monkeypatch.setattr(direct, "_CHECKED_KEPT", 3)
    _, coder = exact_coder
    tables = coder.residual.tables
    u, top, data, check = _check_case(coder, (96, 88), "ct", direct.HALVES_VERSION)
    kept = list(check._kept)
    side = kept[3][0]
    other_mode = side[:1] + ((side[1] + 1) % len(direct.MODES),) + side[2:]
    cases = {"stream": (data[:200] + bytes([data[200] ^ 0x10]) + data[201:], kept),
             "mode": (data, kept[:3] + [(other_mode,) + kept[3][1:]] + kept[4:]),
             "contexts": (data, kept[:-1] + [kept[-1][:2] + ((kept[-1][2] + 1) % 5,) + kept[-1][3:]])}
    gathers = _counting_gathers(monkeypatch)
    for name, (stream, passes) in cases.items():
        with pytest.raises(ValueError):
            direct.LosslessCheck(stream, u, top, tables, direct.HALVES_VERSION, list(passes)).run()
        direct.LosslessCheck(stream, u, top, tables, direct.HALVES_VERSION, list(passes)).register()
        gathers.clear()
        try:
            decoded = direct.decode(stream, *u.shape, top, tables, 0, direct.HALVES_VERSION)
        except ValueError:  # the flipped byte: the decoder's own refusal
            decoded = None
        assert gathers, name
        assert (decoded is not None and np.array_equal(decoded, u)) == (name != "stream"), name
    check.run()  # the encoder's own passes hold
    with pytest.raises(ValueError, match="run already"):
        check.run()


def test_a_lossless_encode_is_checked_not_decoded_twice(exact_coder, monkeypatch):
    """encode_image of a lossless image then its pixel-by-pixel comparison (what edge-codec encode --max-error 0
    does): the comparison decodes the container and maps the values back, and takes the tile from the check."""
    from edge_runtime.runtime import compare_stream

    monkeypatch.setattr(direct, "_CHECKED_KEPT", 3)
    b, coder = exact_coder
    u, _top, _data, _check = _check_case(coder, (120, 100), "ct", direct.HALVES_VERSION)
    image = Image(pixels=(u + 7).astype(np.uint16)[None, :, :, None], bits_stored=12, signed=False, modality="CT")
    data = encode_image(image, coder=coder, model_id=b.model_id, quality=None, max_error=0)
    gathers = _counting_gathers(monkeypatch)
    assert compare_stream(image, data, coder, model_ids=[b.model_id])[0] == 0 and not gathers
    assert compare_stream(image, data, coder, model_ids=[b.model_id])[0] == 0 and gathers  # once: then decoded


@pytest.mark.parametrize("d", [1, 2, 5])
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (33, 20), (64, 48)])
def test_bounded_round_trip_holds_the_bound(exact_coder, shape, d):
    _, coder = exact_coder
    rng = np.random.default_rng(d + sum(shape))
    tables = coder.residual.tables
    for u in (rng.integers(0, 200, shape), _graphics(*shape, seed=d), np.full(shape, 7)):
        top = int(u.max())
        data = direct.encode(u, tables, d, top)
        y = direct.decode(data, *shape, top, tables, d)
        assert np.abs(y - u).max() <= d and y.min() >= 0 and y.max() <= top
    noisy = np.clip(100 + np.round(rng.normal(0, 6, shape)), 0, 200).astype(np.int64)
    if noisy.size > 100:  # noise is what a bound saves bits on
        assert len(direct.encode(noisy, tables, d, 200)) < len(direct.encode(noisy, tables, 0, 200))


def test_encoder_keeps_the_direct_tile_where_it_is_shorter_and_it_decodes_exactly(exact_coder):
    b, coder = exact_coder
    x = _graphics(64, 64)
    tile = coder.encode_bounded(x, 0, 255, 0)
    assert tile[0] & 0x1F == PlaneCoder.DIRECT_ACTIVITY  # no base: graphics, in raster order (test_edge_raster)
    assert struct.unpack_from("<I", tile, 5)[0] == PlaneCoder.RASTER_FIELD and PlaneCoder.without_base(tile)
    based = PlaneCoder(coder.p, coder.coding, coder.transforms, coder.residual, direct=False)
    assert len(tile) < len(based.encode_bounded(x, 0, 255, 0))
    assert np.array_equal(coder.decode_bounded(tile, 64, 64, 0, 255, 0), x)
    assert coder.tile_transform(tile, True) is None
    near = coder.encode_bounded(x, 0, 255, 2)  # in a plane with a max error: without a base too
    assert near[0] & ~PlaneCoder.LOSSLESS == PlaneCoder.DIRECT_ACTIVITY
    y = coder.decode_bounded(near, 64, 64, 0, 255, 2)
    assert np.abs(y - x).max() <= 2 and (np.array_equal(y, x) or not near[0] & PlaneCoder.LOSSLESS)
    image = Image(pixels=x.astype(np.uint8)[None, :, :, None], bits_stored=8, signed=False)
    for d in (0, 2):
        out, _ = decode_image(encode_image(image, coder=coder, model_id=b.model_id, quality=None, max_error=d),
                              coder=coder, model_ids=[b.model_id])
        assert np.array_equal(out.pixels, image.pixels)


def test_fast_encode_codes_every_tile_without_a_base_within_the_bound(exact_coder, monkeypatch):
    b, coder = exact_coder
    rng = np.random.default_rng(6)
    r, c = np.mgrid[0:70, 0:90]
    x = np.round(800 + 300 * np.sin(r / 9) + rng.normal(0, 20, r.shape)).astype(np.int64)  # noisy: a base may win
    monkeypatch.setattr(PlaneCoder, "search_base_quality", lambda *a, **k: pytest.fail("the fast encode searched"))
    for d in (0, 1, 4):
        tile = coder.encode_bounded(x, int(x.min()), int(x.max()), d, quality=0)
        assert PlaneCoder.without_base(tile)  # no base
        y = coder.decode_bounded(tile, *x.shape, int(x.min()), int(x.max()), d)
        assert np.abs(y - x).max() <= d
        bodies = [direct.encode(x - x.min(), coder.residual.tables, d, int(x.max() - x.min()), version=v)
                  for v in (direct.HALVES_VERSION, direct.ACTIVITY_VERSION)]
        assert tile[9:] == min(bodies, key=len)  # the direct tile the full encode weighs as well (a small tile: both)
    image = Image(pixels=x.astype(np.uint16)[None, :, :, None], bits_stored=12, signed=False)
    data = encode_image(image, coder=coder, model_id=b.model_id, quality=0, max_error=0)
    out, header = decode_image(data, coder=coder, model_ids=[b.model_id])
    assert header.lossless and np.array_equal(out.pixels, image.pixels)
    r, c = np.mgrid[0:24, 0:32]  # a multi-frame RGB loop: colour transform and frame groups, no tile with a base
    loop = np.stack([np.roll(100 + 60 * np.sin(r / 5)[..., None] + 40 * np.cos(c / 7)[..., None]
                             + rng.normal(0, 3, (24, 32, 3)), k, axis=1) for k in range(4)])
    image = Image(pixels=loop.clip(0, 255).astype(np.uint8), bits_stored=8, signed=False, photometric="RGB")
    for d in (0, 2):
        out, _ = decode_image(encode_image(image, coder=coder, model_id=b.model_id, quality=0, max_error=d),
                              coder=coder, model_ids=[b.model_id])
        assert np.abs(out.pixels.astype(np.int64) - image.pixels).max() <= d
    based = PlaneCoder(coder.p, coder.coding, coder.transforms, coder.residual, direct=False)
    with pytest.raises(ValueError, match="without a base"):
        based.encode_bounded(x, int(x.min()), int(x.max()), 0, quality=0)


def test_small_tiles_have_no_base_by_default(exact_coder, monkeypatch):
    _, coder = exact_coder
    rng = np.random.default_rng(7)
    r, c = np.mgrid[0:70, 0:90]
    x = np.round(800 + 300 * np.sin(r / 9) + rng.normal(0, 20, r.shape)).astype(np.int64)
    lo, hi = int(x.min()), int(x.max())
    searched = []
    search = PlaneCoder.search_base_quality
    monkeypatch.setattr(PlaneCoder, "search_base_quality",
                        lambda self, *a, **k: searched.append(1) or search(self, *a, **k))
    for d in (0, 2):
        tile = coder.encode_bounded(x, lo, hi, d)  # no base quality given: at most BASE_MIN_PIXELS, no base
        assert tile == coder.encode_bounded(x, lo, hi, d, quality=0) and not searched
    monkeypatch.setattr(PlaneCoder, "BASE_MIN_PIXELS", x.size - 1)
    tile = coder.encode_bounded(x, lo, hi, 0)  # a larger tile: a base is weighed as well
    assert searched and len(tile) <= len(coder.encode_bounded(x, lo, hi, 0, quality=0))
    assert np.array_equal(coder.decode_bounded(tile, *x.shape, lo, hi, 0), x)


def test_tiles_over_the_direct_limit_have_a_base_and_are_refused_without(exact_coder, monkeypatch):
    _, coder = exact_coder
    monkeypatch.setattr(PlaneCoder, "RASTER_GATE", 2.0)  # graphics without raster tiles (test_edge_raster)
    x = _graphics(48, 40, seed=4)
    small = coder.encode_bounded(x, 0, 255, 0)
    assert small[0] & 0x1F == PlaneCoder.DIRECT_ACTIVITY
    real = direct.encode
    with monkeypatch.context() as m:  # a version 1 tile, as encoders wrote them before version 2
        m.setattr(PlaneCoder, "DIRECT_ACTIVITY", 0)
        m.setattr(PlaneCoder, "HALVES_TRIAL_PIXELS", 0)  # one encode, of the version 2 header
        m.setattr(PlaneCoder, "HALVES_GATE", 0.0)
        m.setattr(direct, "encode", lambda *a, **k: real(*a, **{**k, "version": 1}))
        v1 = coder.encode_bounded(x, 0, 255, 0)
    assert v1[0] & 0x1F == 0
    monkeypatch.setattr(direct, "MAX_PIXELS", x.size - 1)  # the tile is now one pixel over the limit
    monkeypatch.setattr(direct, "encode", lambda *a, **k: pytest.fail("a tile over the limit was coded without a base"))
    for quality in (None, 0):  # the fast encode too: it searches a base instead
        tile = coder.encode_bounded(x, 0, 255, 0, quality=quality)
        assert not PlaneCoder.without_base(tile) and np.array_equal(coder.decode_bounded(tile, 48, 40, 0, 255, 0), x)
    with pytest.raises(ValueError, match="inconsistent.*at most"):  # a version 2 tile of that size: refused
        coder.decode_bounded(small, 48, 40, 0, 255, 0)
    assert np.array_equal(coder.decode_bounded(v1, 48, 40, 0, 255, 0), x)  # version 1 tiles keep no limit


def test_inconsistent_or_corrupt_direct_tiles_are_refused(exact_coder, monkeypatch):
    _, coder = exact_coder
    monkeypatch.setattr(PlaneCoder, "RASTER_GATE", 2.0)  # graphics without raster tiles (test_edge_raster)
    x = _graphics(48, 40, seed=3)
    tile = coder.encode_bounded(x, 0, 255, 0)
    assert tile[0] & 0x1F == PlaneCoder.DIRECT_ACTIVITY
    assert struct.unpack_from("<I", tile, 5)[0] in PlaneCoder.DIRECT_VERSION_FIELD.values()
    with pytest.raises(ValueError, match="inconsistent"):  # no base, but a base length
        coder.decode_bounded(tile[:5] + struct.pack("<I", 5) + tile[9:], 48, 40, 0, 255, 0)
    spread = x * 251 + 7  # six values over 16 bits: coded as indices into a table of the values present
    table_tile = coder.encode_bounded(spread, 0, 65535, 0)
    assert struct.unpack_from("<I", table_tile, 1)[0] == 0
    with pytest.raises(ValueError, match="inconsistent"):  # a lossless tile in a plane with a bound, not flagged
        coder.decode_bounded(table_tile, 48, 40, 0, 65535, 3)
    rng = np.random.default_rng(0)
    g = struct.unpack_from("<I", tile, 1)[0]
    body_start = 13 + 4 * struct.unpack_from("<I", tile, 9)[0] if g == 0 else 9  # after the header and value table
    for i in range(200):  # corrupt words: values in range or an error decode_plane reports; nothing else
        bad = bytearray(tile)
        for _ in range(1 + i % 4):
            bad[int(rng.integers(body_start, len(bad)))] = int(rng.integers(0, 256))
        if i % 5 == 0:
            bad = bad[:body_start + 4 * int(rng.integers(0, (len(bad) - body_start) // 4 + 1))]
        try:
            y = coder.decode_bounded(bytes(bad), 48, 40, 0, 255, 0)
        except (ValueError, AssertionError):  # what decode_plane reports as InvalidBitstreamError (constriction's
            continue                          # word for exhausted or inconsistent data is AssertionError)
        assert y.shape == x.shape and 0 <= y.min() and y.max() <= 255


SOURCES = {NAME: ("image_dfl.dcm", CROP, 0),  # (pydicom test file, crop, max error): direct's version 1
           NEAR_NAME: ("693_UNCR.dcm", NEAR_CROP, 2)}
ACTIVITY_SOURCES = {"dfl_crop_lossless_direct2.kcd": ("image_dfl.dcm", CROP, 0),  # version 2 (PlaneCoder.DIRECT_ACTIVITY)
                    "ct693_crop_d2_direct2.kcd": ("693_UNCR.dcm", NEAR_CROP, 2),
                    "ct693_body_lossless_direct2.kcd": ("693_UNCR.dcm", (300, 200), 0),
                    SPLIT_NAME: ("693_UNCR.dcm", (200, 100), 0, 256)}  # 256x256: a pass split in two (SPLIT_MIN)
HALVES_SOURCES = {"mr_crop_lossless_direct3.kcd": ("MR-SIEMENS-DICOM-WithOverlays.dcm", (180, 180), 0, 128),
                  "mr_crop_d2_direct3.kcd": ("MR-SIEMENS-DICOM-WithOverlays.dcm", (180, 180), 2, 128)}  # version 3
RASTER_SOURCES = {"dfl_crop_lossless_raster.kcd": ("image_dfl.dcm", (0, 128), 0, 128),  # edge_runtime.raster
                  "mlut18_crop_d2_raster.kcd": ("mlut_18.dcm", (100, 100), 2, 96),  # a lossless tile (LOSSLESS flag)
                  "palette_crop_lossless_raster.kcd": ("examples_palette.dcm", (150, 400), 0, 96)}  # escapes: MED


def _source(name: str) -> Image:
    from pydicom.data import get_testdata_file

    from data.readers import read_image

    filename, (r, c), _d, *size = {**SOURCES, **ACTIVITY_SOURCES, **HALVES_SOURCES, **RASTER_SOURCES}[name]
    side = size[0] if size else 96
    image = read_image(get_testdata_file(filename))
    return Image(pixels=np.ascontiguousarray(image.pixels[:1, r:r + side, c:c + side]), bits_stored=image.bits_stored,
                 signed=image.signed, modality=image.modality, photometric=image.photometric)


def _write_golden(sources: dict, spec_path) -> None:
    from edge_runtime.runtime import load_codec

    bundle, coder = load_codec(None)
    spec = {"model_id": bundle.model_id.hex(), "streams": {}}
    for name, (filename, crop, d, *size) in sources.items():
        data = encode_image(_source(name), coder=coder, model_id=bundle.model_id, quality=None, max_error=d)
        (GOLDEN / name).write_bytes(data)
        out, _ = decode_image(data, coder=coder)
        side = size[0] if size else 96
        spec["streams"][name] = {"source": f"{filename} (pydicom / pydicom-data), {side}x{side} crop at {crop}",
                                 "max_error": d, "shape": list(out.pixels.shape), "dtype": out.pixels.dtype.name,
                                 "sha256": digest(out.pixels), "bytes": len(data)}
    spec_path.write_text(json.dumps(spec, indent=1) + "\n")


@pytest.mark.skipif(not os.environ.get("KCD_REGENERATE_DIRECT_GOLDEN"), reason="rewrites the golden direct streams")
def test_regenerate_golden_direct_streams():
    _write_golden(SOURCES, SPEC_PATH)  # version 1: only a decoder of before version 2 could write them again


@pytest.mark.skipif(not os.environ.get("KCD_REGENERATE_DIRECT_ACTIVITY_GOLDEN"),
                    reason="rewrites the golden direct streams of version 2")
def test_regenerate_golden_direct_activity_streams():
    _write_golden(ACTIVITY_SOURCES, ACTIVITY_SPEC_PATH)


@pytest.mark.skipif(not os.environ.get("KCD_REGENERATE_DIRECT_HALVES_GOLDEN"),
                    reason="rewrites the golden direct streams of version 3")
def test_regenerate_golden_direct_halves_streams():
    _write_golden(HALVES_SOURCES, HALVES_SPEC_PATH)


@pytest.mark.skipif(not os.environ.get("KCD_REGENERATE_RASTER_GOLDEN"), reason="rewrites the golden raster streams")
def test_regenerate_golden_raster_streams():
    _write_golden(RASTER_SOURCES, RASTER_SPEC_PATH)


@pytest.fixture(scope="module", params=["xnnpack", "reference"])
def shipped(request):
    return shipped_spec(SPEC_PATH, request.param, "direct")


@pytest.fixture(scope="module", params=["xnnpack", "reference"])
def shipped_activity(request):
    return shipped_spec(ACTIVITY_SPEC_PATH, request.param, "direct (version 2)")


@pytest.fixture(scope="module", params=["xnnpack", "reference"])
def shipped_halves(request):
    return shipped_spec(HALVES_SPEC_PATH, request.param, "direct (version 3)")


def _check_golden(shipped, sources: dict, name: str, quality: int, version_field: int = 0) -> None:
    from edge_runtime import bitstream as bs

    spec, ids, coder = shipped
    want = spec["streams"][name]
    data = (GOLDEN / name).read_bytes()
    _, tiles, _ = bs.parse(data)
    assert tiles[0][0] & 0x1F == quality  # the stream exercises a tile without a base of this version
    assert struct.unpack_from("<I", tiles[0], 5)[0] == version_field
    image, _ = decode_image(data, coder=coder, model_ids=ids)
    assert list(image.pixels.shape) == want["shape"] and image.pixels.dtype.name == want["dtype"]
    assert digest(image.pixels) == want["sha256"]
    d = sources[name][2]
    assert np.abs(image.pixels.astype(np.int64) - _source(name).pixels).max() <= d


@pytest.fixture(scope="module", params=["xnnpack", "reference"])
def shipped_raster(request):
    return shipped_spec(RASTER_SPEC_PATH, request.param, "raster")


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_golden_direct_stream_decodes_to_the_recorded_pixels(shipped, name):
    _check_golden(shipped, SOURCES, name, 0)


@pytest.mark.parametrize("name", sorted(ACTIVITY_SOURCES))
def test_golden_direct_activity_stream_decodes_to_the_recorded_pixels(shipped_activity, name, monkeypatch):
    splits = []
    real = direct._split_prediction
    monkeypatch.setattr(direct, "_split_prediction", lambda *a: splits.append(a[3]) or real(*a))
    _check_golden(shipped_activity, ACTIVITY_SOURCES, name, PlaneCoder.DIRECT_ACTIVITY)
    assert bool(splits) == (name == SPLIT_NAME)  # the 256x256 crop exercises a split pass


@pytest.mark.parametrize("name", sorted(HALVES_SOURCES))
def test_golden_direct_halves_stream_decodes_to_the_recorded_pixels(shipped_halves, name):
    _check_golden(shipped_halves, HALVES_SOURCES, name, PlaneCoder.DIRECT_ACTIVITY, direct.HALVES_VERSION)


@pytest.mark.parametrize("name", sorted(RASTER_SOURCES))
def test_golden_raster_stream_decodes_to_the_recorded_pixels(shipped_raster, name, monkeypatch):
    from edge_runtime import bitstream as bs

    escapes = []
    real = raster._med
    monkeypatch.setattr(raster, "_med", lambda v: escapes.append(v.shape[1]) or real(v))
    _check_golden(shipped_raster, RASTER_SOURCES, name, PlaneCoder.DIRECT_ACTIVITY, PlaneCoder.RASTER_FIELD)
    _, tiles, _ = bs.parse((GOLDEN / name).read_bytes())
    assert bool(tiles[0][0] & PlaneCoder.LOSSLESS) == (RASTER_SOURCES[name][2] > 0)
    assert bool(escapes) == name.startswith("palette")  # its escapes are differences to the prediction
