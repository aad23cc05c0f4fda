"""The decoder's fast paths compute exactly what the reference definitions do (same indices, same bits)."""
from __future__ import annotations

import numpy as np
import pytest

from edge_runtime import context as ctx
from edge_runtime.entropy import Decoder, Encoder, laplace_tables


def test_mag_code_matches_the_full_table():
    v = np.arange(ctx._G_MAX + 1, dtype=np.int64)
    full = np.round(16.0 * np.log2(1.0 + v.astype(np.float64))).astype(np.int64)
    assert np.array_equal(ctx.mag_code(v), full)
    assert np.array_equal(ctx.mag_code(-v), full)
    assert ctx.mag_code(np.int64(5000)) == full[5000]
    assert ctx.mag_code(np.array([1 << 30])) == full[-1]  # clipped at 2**20


def test_mag_code_steps_are_exact_integer_thresholds():
    steps = [int(t) for t in ctx._G_STEPS]
    assert len(steps) == 320 and steps == sorted(steps)
    for c, t in enumerate(steps, start=1):  # the least v with 16 log2(1 + v) >= c - 1/2, in integers
        assert (1 + t) ** 32 >= 1 << (2 * c - 1) and (t == 0 or t ** 32 < 1 << (2 * c - 1))
    assert (1 + ctx._G_MAX) ** 32 < 1 << (2 * 321 - 1)  # 2**20 codes as 320: no step beyond it


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (2, 2), (3, 7), (8, 8), (17, 12), (64, 33)])
def test_band_context_features_match_detail_features(shape):
    rng = np.random.default_rng(sum(shape))
    half = (max(1, shape[0] // 2), max(1, shape[1] // 2))
    parent = rng.integers(-40, 40, half) * (rng.random(half) < 0.5)
    siblings = [rng.integers(-300, 300, shape) for _ in range(2)]
    band = rng.integers(-5000, 5000, shape) * (rng.random(shape) < 0.6)
    for n_sib in range(3):
        for par in (None, parent):
            sib = siblings[:n_sib]
            bc = ctx.DetailBandContext(shape, None if par is None else ctx.mag_code(par), [ctx.mag_code(s) for s in sib])
            known = np.zeros(shape, bool)
            decoded = np.zeros(shape, np.int64)
            for phase in range(3):
                mask = ctx.phase_masks(shape)[phase]
                ref = ctx.detail_features(decoded, phase, known, par, sib)
                assert np.array_equal(bc.features(phase), ref)
                decoded[mask] = band[mask]
                bc.set(phase, band[mask])
                known |= mask


def _random_context_weights(rng, levels: int, hidden: int = 8) -> ctx.ContextWeights:
    """A context network with a hidden layer, weights of a trained one's magnitude."""
    return ctx.ContextWeights(detail=rng.integers(-300000, 300000, (levels, 3, 3, ctx.NUM_FEATURES)),
                              ll=np.zeros((3, 2), np.int64),
                              hidden=rng.integers(-200000, 200000, (levels, 3, 3, hidden, ctx.NUM_FEATURES)),
                              hidden_bias=rng.integers(-3000000, 3000000, (levels, 3, 3, hidden)),
                              out=rng.integers(-300, 300, (levels, 3, 3, hidden)))


def test_context_network_float_path_is_the_integer_one():
    rng = np.random.default_rng(3)
    w = _random_context_weights(rng, 3)
    f = rng.integers(0, ctx.FEATURE_MAX + 1, (5000, ctx.NUM_FEATURES))
    f[:, 0] = 1
    assert w._float_exact()
    for lv in (1, 2, 3):
        fast = w.group_index(f, lv, 1, 2, 64)
        w._exact = False
        slow = w.group_index(f, lv, 1, 2, 64)
        w._exact = None
        assert np.array_equal(fast, slow)
        assert fast.dtype == np.int64 and 0 < len(np.unique(fast))


def test_context_network_with_its_biases_in_the_constant_feature_is_the_integer_one():
    rng = np.random.default_rng(4)
    w = _random_context_weights(rng, 2)
    f = np.asfortranarray(rng.integers(0, ctx.FEATURE_MAX + 1, (4000, ctx.NUM_FEATURES)).astype(np.float64))
    f[:, 0] = 1
    f[::3, 1:] = 0  # zero contexts: the index is the biases' alone
    for lv, o, phase in ((1, 0, 0), (2, 2, 1), (1, 1, 2)):
        folded = w.group_index(f, lv, o, phase, 64, constant_first=True)
        assert np.array_equal(folded, w.group_index(f, lv, o, phase, 64))
        w._exact = False
        assert np.array_equal(folded, w.group_index(f.astype(np.int64), lv, o, phase, 64))  # the int64 definition
        w._exact = None


def test_group_spans_with_a_known_bound_is_the_checked_order():
    from edge_runtime.entropy import group_spans

    rng = np.random.default_rng(5)
    for n, bound in ((1, 1), (7, 3), (300, 64), (5000, 256), (5000, 300), (20000, 70000)):
        idx = rng.integers(0, bound, n)
        order, spans = group_spans(idx, bound)
        assert np.array_equal(order, np.argsort(idx, kind="stable"))
        assert (order, spans) == (order, group_spans(idx)[1])
        assert spans == [(k, int(np.sum(idx < k)), int(np.sum(idx <= k))) for k in np.unique(idx).tolist()]
    tables = laplace_tables(64, 0.1, 50.0, 0.2)
    idx = rng.integers(0, 64, 3000)
    sym = np.round(rng.laplace(0, 1 + idx)).astype(np.int64)
    enc = Encoder(tables)
    enc.encode(sym, idx, 64)
    assert enc.getvalue() == (lambda e: (e.encode(sym, idx), e.getvalue())[1])(Encoder(tables))
    assert np.array_equal(Decoder(tables, enc.getvalue()).decode(idx, 64), sym)


def test_context_network_with_huge_weights_keeps_int64():
    big = ctx.HIDDEN_LIMIT
    w = ctx.ContextWeights(detail=np.zeros((1, 3, 3, ctx.NUM_FEATURES), np.int64), ll=np.zeros((3, 2), np.int64),
                           hidden=np.full((1, 3, 3, 2, ctx.NUM_FEATURES), big), hidden_bias=np.zeros((1, 3, 3, 2)),
                           out=np.ones((1, 3, 3, 2)))
    assert not w._float_exact()


def test_grouped_coding_round_trip_with_escapes():
    tables = laplace_tables(16, 0.1, 50.0, 0.2)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 16, 20000)
    sym = np.round(rng.laplace(0, 1 + idx * 3.0)).astype(np.int64)
    sym[::997] = 10 ** 6  # escapes in several tables
    enc = Encoder(tables, track=True)
    enc.encode(sym, idx)
    enc.encode(sym[:0], idx[:0])
    assert enc.estimated_bits == pytest.approx(tables.bits(sym, idx))
    dec = Decoder(tables, enc.getvalue())
    assert np.array_equal(dec.decode(idx), sym)
    assert dec.decode(idx[:0]).size == 0


def test_one_table_coding_is_the_grouped_stream():
    tables = laplace_tables(16, 0.1, 50.0, 0.2)
    rng = np.random.default_rng(1)
    for k in (0, 7, 15):
        sym = np.round(rng.laplace(0, 1 + k * 3.0, 3000)).astype(np.int64)
        sym[::251] = -(10 ** 5)  # escapes, negative
        sym[5::307] = 10 ** 5
        grouped, one = Encoder(tables, track=True), Encoder(tables, track=True)
        grouped.encode(sym, np.full(sym.size, k))
        one.encode_table(sym, k)
        one.encode_table(sym[:0], k)
        assert one.getvalue() == grouped.getvalue() and one.estimated_bits == pytest.approx(grouped.estimated_bits)
        assert np.array_equal(Decoder(tables, one.getvalue()).decode_table(k, sym.size), sym)


def test_symbol_bits_is_per_table_log2():
    tables = laplace_tables(4, 0.5, 8.0, 0.2)
    s = np.array([[0, 1], [-2, 500]])
    k = np.array([[0, 3], [2, 1]])
    got = tables.symbol_bits(s, k)
    for (i, j), v in np.ndenumerate(s):
        pos, esc = tables.positions(int(k[i, j]), np.array([v]))
        assert got[i, j] == pytest.approx(tables._group_bits(int(k[i, j]), np.array([v]), pos, esc)[0])


def test_allocator_tuning_is_idempotent_and_changes_no_result(codec, synthetic_dcm):
    from data.readers import read_image
    from edge_runtime.codec import decode_image, encode_image
    from edge_runtime.threads import _glibc, keep_freed_memory

    bundle, coder = codec
    image = read_image(synthetic_dcm)
    data = encode_image(image, coder=coder, model_id=bundle.model_id, quality=12)
    before = decode_image(data, coder=coder)[0].pixels
    assert keep_freed_memory() is keep_freed_memory() is _glibc()
    assert encode_image(image, coder=coder, model_id=bundle.model_id, quality=12) == data
    assert np.array_equal(decode_image(data, coder=coder)[0].pixels, before)


def test_table_index_float_path_is_the_integer_definition():
    rng = np.random.default_rng(5)
    f = rng.integers(0, ctx.FEATURE_MAX + 1, (20000, 6))
    f[:, 0] = 1
    for scale in (1 << 12, 1 << 24, 1 << 30):
        w = rng.integers(-scale, scale, 6)
        ref = np.clip((f @ w + (1 << (ctx.SHIFT - 1))) >> ctx.SHIFT, 0, 63)
        got = ctx.table_index(np.asfortranarray(f), w, 64)
        assert got.dtype == np.int64 and np.array_equal(got, ref)
    w = np.full(6, 1 << 45)  # beyond the float bound: the int64 path
    assert np.array_equal(ctx.table_index(f, w, 64), np.clip((f @ w + (1 << 11)) >> 12, 0, 63))


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (8, 8), (17, 12), (40, 33)])
def test_residual_walk_features_match_their_definitions(shape):
    from edge_runtime import residual as res
    rng = np.random.default_rng(sum(shape))
    base = rng.integers(0, 4000, shape)
    e = rng.integers(-30, 30, shape) * (rng.random(shape) < 0.7)
    weights = rng.integers(-(1 << 14), 1 << 14, (res.NUM_PASSES, res.NUM_FEATURES))
    model = res.ResidualModel(weights, laplace_tables(16, 0.2, 40.0, 0.0))
    d = 1
    activity = res._activity(base, 2 * d + 1)
    known = np.zeros(shape, bool)
    seen = []

    def visit(phase, idx, f, nb):
        partial = np.where(known, e, 0)
        assert np.array_equal(f, res.features(partial, known, activity, phase))
        assert np.array_equal(nb, res.neighbour_sum(partial, phase)[res.pass_mask(shape, phase)])
        assert np.array_equal(idx, ctx.table_index(np.ascontiguousarray(f), weights[phase], 16))
        mask = res.pass_mask(shape, phase)
        known[mask] = True
        seen.append(phase)
        return e[mask]

    assert np.array_equal(res._walk(base, d, model, visit), e)
    assert seen == list(range(res.NUM_PASSES))


@pytest.mark.parametrize("zero_share", [0.0, 0.3, 0.6, 0.95, 1.0])
def test_detail_index_with_zero_context_rows_is_the_plain_one(zero_share):
    from edge_runtime.subband_coder import CodingModel, zero_context
    rng = np.random.default_rng(int(zero_share * 100))
    model = CodingModel(_random_context_weights(rng, 2), laplace_tables(64, 0.05, 200.0, 0.2))
    f = np.asfortranarray(rng.integers(0, 400, (3000, ctx.NUM_FEATURES)))
    f[:, 0] = 1
    f[rng.random(3000) < zero_share, 1:] = 0
    zero = zero_context(f, len(f))
    for lv in (1, 2):
        assert np.array_equal(model.detail_index(f, lv, 2, 1, zero), model.detail_index(f, lv, 2, 1))
    empty = f[:0]  # a pass with no positions (a band of one row or column)
    assert model.detail_index(empty, 1, 0, 2, zero_context(empty, 0)).shape == (0,)


def _direct_geometry_by_masks(shape):
    """edge_runtime.direct's pass geometry as its docstring defines it: each pass's positions from a mask of the
    whole tile (row-major), every neighbour mirrored position by position."""
    from edge_runtime import direct

    rows, cols = shape
    _mirrored = direct._mirror
    r, c = np.arange(rows)[:, None], np.arange(cols)[None, :]
    lattice = np.flatnonzero((r % direct.STRIDE == 0) & (c % direct.STRIDE == 0))
    passes, s = [], direct.STRIDE // 2
    while s >= 1:
        m = 2 * s
        centres = (r % m == s) & (c % m == s)
        edges = ((r % m == 0) & (c % m == s)) | ((r % m == s) & (c % m == 0))
        for mask, diagonal in ((centres, True), (edges, False)):
            rr, cc = np.divmod(np.flatnonzero(mask), cols)
            up, down = _mirrored(rr - s, rr + s, rows), _mirrored(rr + s, rr - s, rows)
            left, right = _mirrored(cc - s, cc + s, cols), _mirrored(cc + s, cc - s, cols)
            if diagonal:
                nb = [up * cols + left, up * cols + right, down * cols + left, down * cols + right]
            else:
                v, h = up >= 0, left >= 0
                nb = [np.where(v, up * cols + cc, rr * cols + left), np.where(v, down * cols + cc, rr * cols + right),
                      np.where(h, rr * cols + left, up * cols + cc), np.where(h, rr * cols + right, down * cols + cc)]
            far = []
            offsets = direct.FAR_CENTRES + direct.RING_CENTRES if diagonal else direct.FAR_EDGES + direct.RING_EDGES
            for a, b in offsets:
                fr, fc = _mirrored(rr + a * s, rr - a * s, rows), _mirrored(cc + b * s, cc - b * s, cols)
                far.append(np.where((fr >= 0) & (fc >= 0), fr * cols + fc, nb[len(far) % 4]))
            passes.append((rr * cols + cc, nb, far))
        s //= 2
    return lattice, passes


@pytest.mark.parametrize("shape", [(1, 1), (1, 40), (40, 1), (2, 3), (5, 300), (17, 33), (31, 31), (32, 32),
                                   (33, 65), (64, 64), (97, 70), (130, 257)])
def test_direct_geometry_by_grids_is_the_mask_definition(shape):
    from edge_runtime import direct

    lattice, passes = direct._geometry(shape)
    ref_lattice, ref_passes = _direct_geometry_by_masks(shape)
    assert np.array_equal(lattice, ref_lattice) and len(passes) == len(ref_passes)
    for (at, nb, far), (ref_at, ref_nb, ref_far) in zip(passes, ref_passes):
        assert at.dtype == np.int32 and np.array_equal(at, ref_at)
        for got, want in zip(nb + far, ref_nb + ref_far):
            assert got.dtype == np.int32 and got.flags.c_contiguous and np.array_equal(got, want)


def test_large_geometries_are_not_kept(monkeypatch):
    from edge_runtime import direct, threads

    direct._geometry.cache_clear()
    assert direct._geometry((40, 50)) is direct._geometry((40, 50))  # small: computed once, then reused
    monkeypatch.setattr(threads, "CACHED_PIXELS", 1000)
    first, again = direct._geometry((40, 50)), direct._geometry((40, 50))
    assert first is not again  # computed each time
    assert all(np.array_equal(a, b) for a, b in zip(first[1][-1][1], again[1][-1][1]))


def test_encoder_graph_released_after_a_large_plane(codec, monkeypatch):
    from edge_runtime import tflite_runner

    _, coder = codec
    transforms = coder.transforms[coder.p["transforms"][0]]
    plane = np.random.default_rng(1).random((64, 96)).astype(np.float32)
    kept = transforms.analysis(plane, 2)
    assert any(role == "encoder" for role, _ in transforms._sigs)
    monkeypatch.setattr(tflite_runner, "RELEASE_PIXELS", 64 * 96 - 1)
    released = transforms.analysis(plane, 2)
    assert not any(role == "encoder" for role, _ in transforms._sigs)
    again = transforms.analysis(plane, 2)  # built again: the same bands
    for a, b, c in zip(kept, released, again):
        for x, y, z in zip(*(t if isinstance(t, tuple) else (t,) for t in (a, b, c))):
            assert np.array_equal(x, y) and np.array_equal(x, z)


def _residual_geometry_by_masks(shape):
    """edge_runtime.residual's pass geometry from masks of the whole plane: the decoded count from a box sum."""
    from edge_runtime import residual

    rows, cols = shape
    stride = cols + 2 * residual._PAD
    known, out = np.zeros(shape, bool), []
    for p in range(residual.NUM_PASSES):
        mask = residual.pass_mask(shape, p)
        flat = np.flatnonzero(mask)
        r, c = np.divmod(flat, cols)
        count = np.maximum(residual._box_sum(known.astype(np.int64), 2).ravel()[flat], 1)
        padded = (r + residual._PAD) * stride + (c + residual._PAD)
        neighbours = [padded + (dr * stride + dc) for dr, dc in residual.PASSES[p][2]]
        out.append(([flat, padded, count, r * (stride + 1) + c], neighbours))
        known |= mask
    return out


@pytest.mark.parametrize("shape", [(1, 1), (1, 30), (30, 1), (2, 3), (3, 3), (5, 7), (16, 16), (17, 33), (70, 97),
                                   (129, 64)])
def test_residual_geometry_by_grids_is_the_mask_definition(shape):
    from edge_runtime import residual

    geometry = residual._geometry(shape)
    reference = _residual_geometry_by_masks(shape)
    assert len(geometry) == len(reference)
    for (flat, padded, count, corner, neighbours), (ref, ref_neighbours) in zip(geometry, reference):
        for got, want in zip([flat, padded, count, corner] + list(neighbours), ref + ref_neighbours):
            assert got.dtype == np.int32 and got.flags.c_contiguous and np.array_equal(got, want)


@pytest.mark.parametrize("wavelet", ["haar", "legall53", "cdf97"])
@pytest.mark.parametrize("mode", ["symmetric", "periodization"])
def test_lifting_along_rows_is_the_transposed_lifting_bit_for_bit(wavelet, mode):
    from edge_runtime import exact_dwt

    rng = np.random.default_rng(3)
    lifting = exact_dwt._lifting(wavelet)
    for rows, half in ((1, 1), (3, 5), (64, 40)):
        s, d = rng.normal(0, 50, (rows, half)), rng.normal(0, 5, (rows, half))
        along_rows = exact_dwt._synthesis_1d(s, d, lifting, mode, axis=1)
        transposed = exact_dwt._synthesis_1d(s.T.copy(), d.T.copy(), lifting, mode).T
        assert np.array_equal(along_rows.view(np.int64), transposed.view(np.int64))


def test_levels_follow_the_short_side_in_integers():
    from edge_runtime.codec import levels_for

    for n in range(1, 5000):  # the largest k with 8 * 2**k <= n (floor(log2(n / 8))), at least 1, at most the bundle's
        k = max(k for k in range(-4, 20) if 8 * 2.0 ** k <= max(n, 2))
        assert levels_for(n, n + 7, 64) == max(1, k) and levels_for(n + 7, n, 5) == max(1, min(5, k))


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (5, 1), (2, 2), (2, 7), (9, 4), (33, 17)])
def test_padding_neighbour_means_and_ll_prediction_match_their_definitions(shape):
    """The context's one-sample mirror padding, the parent's 3x3 means and the LL prediction by slices and
    gathers: what np.pad and the stacked shifted planes define, for every phase and odd or thin shapes."""
    from edge_runtime.subband_coder import adjust_indices

    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    a = rng.integers(-50, 400, shape)
    mode = "edge" if min(shape) < 2 else "reflect"
    assert np.array_equal(ctx._pad1(a), np.pad(a, 1, mode=mode))
    p = np.pad(a, 1, mode=mode)
    h, w = shape
    nine = sum(p[1 + dr:1 + dr + h, 1 + dc:1 + dc + w] for dr in (-1, 0, 1) for dc in (-1, 0, 1))
    assert np.array_equal(ctx.parent_means(a), nine // 9)
    known = np.zeros(shape, bool)
    for phase in range(3):
        mask = ctx.phase_masks(shape)[phase]
        pred, spread = ctx.ll_prediction(a, phase, known)
        if phase == 0:
            assert not pred.any() and not spread.any() and pred.size == mask.sum()
        else:
            vals = np.where(known, a, 0)
            nb = np.stack([ctx.shifted(vals, dr, dc) for dr, dc in (ctx.DIAG if phase == 1 else ctx.DIRECT)])
            assert np.array_equal(pred, np.floor_divide(nb.sum(0) + 2, 4)[mask])
            assert np.array_equal(spread, ctx.mag_code(nb.max(0) - nb.min(0))[mask])
        known |= mask
    idx = rng.integers(0, 64, a.size)
    zero = rng.random(a.size) < 0.4
    for o_all, o_zero in ((0, 0), (-7, 0), (5, -30), (31, 15), (-32, -48)):
        assert np.array_equal(adjust_indices(idx, zero, o_all, o_zero, 64),
                              np.clip(idx + o_all + np.where(zero, o_zero, 0), 0, 63))


def _refinement_by_definition(refinement, ll: np.ndarray, level: int) -> np.ndarray:
    """ExactRefinement.predict as its docstring defines it, in int64: whole-plane layers, zero 'same' padding,
    round half up and ReLU between layers."""
    from edge_runtime import refine

    g = 2.0 ** level
    h = np.round(ll * (refine.INPUT_GAIN / g * 2.0 ** refine.ACT_BITS)).astype(np.int64)[:, :, None]
    layers = refinement.levels[level - 1]
    for n, (kernel, bias) in enumerate(layers):
        p = np.pad(h, ((1, 1), (1, 1), (0, 0)))
        acc = np.broadcast_to(bias.astype(np.int64), h.shape[:2] + bias.shape).copy()
        for a in range(3):
            for b in range(3):
                acc += np.einsum("rci,io->rco", p[a:a + h.shape[0], b:b + h.shape[1]], kernel[a, b].astype(np.int64))
        h = acc if n == len(layers) - 1 else np.maximum((acc + (1 << (refine.WEIGHT_BITS - 1))) >> refine.WEIGHT_BITS, 0)
    return np.moveaxis(h.astype(np.float64) * (g / refine.INPUT_GAIN / 2.0 ** (refine.WEIGHT_BITS + refine.ACT_BITS)), 2, 0)


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (5, 1), (3, 3), (9, 14), (40, 23), (70, 130)])
def test_refinement_by_blocks_of_rows_is_the_whole_plane_network(shape, monkeypatch):
    from edge_runtime import refine

    rng = np.random.default_rng(sum(shape))
    channels = [1, 8, 8, 3]
    levels = [[(rng.normal(0, 0.3, (3, 3, channels[i], channels[i + 1])), rng.normal(0, 0.1, channels[i + 1]))
               for i in range(3)] for _ in range(2)]
    net = refine.ExactRefinement(levels)
    ll = np.round(rng.normal(0, 30, shape) * 4) / 4
    for level in (1, 2):
        want = _refinement_by_definition(net, ll, level)
        assert np.abs(want).max() > 0
        for rows in (1, 2, 3, 7, 64):  # blocks of `rows` rows: thinner than the network's reach, and the whole plane
            monkeypatch.setattr(refine, "_MIN_BLOCK_ROWS", rows)
            monkeypatch.setattr(refine, "_BLOCK_PIXELS", 0)
            got = net.predict(ll, level)
            assert len(got) == 3 and all(np.array_equal(g, w) for g, w in zip(got, want)), (level, rows)
