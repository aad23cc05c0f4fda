"""Entropy coder, integer context model and subband coder: exact round trips and rate estimates."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edge_runtime import context as ctx
from edge_runtime.entropy import Decoder, Encoder, EntropyTables, laplace_tables, quantize_pmf
from edge_runtime.subband_coder import CodingModel, decode_subbands, encode_subbands, estimate_bits

TABLES = laplace_tables(16, 0.05, 256.0, 0.2)


def test_quantize_pmf_is_valid():
    f = quantize_pmf(np.array([0.5, 0.25, 1e-12, 0.25]))
    assert f.min() >= 1 and f.sum() == 1 << 24


def test_tables_serialize_round_trip():
    arrays = TABLES.to_arrays()
    back = EntropyTables.from_arrays(arrays)
    assert all(np.array_equal(a, b) for a, b in zip(TABLES.freqs, back.freqs))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 3000))
def test_coder_round_trip_with_escapes(seed, n):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, TABLES.num_tables, n)
    x = np.round(rng.laplace(0, 3.0, n) * rng.choice([1, 1, 1, 1000, 1e6], n)).astype(np.int64)
    enc = Encoder(TABLES)
    enc.encode(x, idx)
    data = enc.getvalue()
    assert np.array_equal(Decoder(TABLES, data).decode(idx), x)


def test_actual_bits_match_estimate():
    rng = np.random.default_rng(1)
    idx = rng.integers(0, TABLES.num_tables, 200_000)
    scales = np.exp(np.linspace(np.log(0.05), np.log(256.0), 16))[idx]
    x = np.round(rng.laplace(0, scales)).astype(np.int64)
    enc = Encoder(TABLES)
    enc.encode(x, idx)
    actual = 8 * len(enc.getvalue())
    assert abs(actual - TABLES.bits(x, idx)) / actual < 0.002


def test_symbol_bits_sum_to_bits():
    rng = np.random.default_rng(2)
    idx = rng.integers(0, 16, 500)
    x = rng.integers(-3000, 3000, 500)
    assert np.isclose(TABLES.symbol_bits(x, idx).sum(), TABLES.bits(x, idx))


def _model(levels=3):
    w = ctx.ContextWeights(np.zeros((levels, 3, 3, ctx.NUM_FEATURES), np.int64), np.zeros((3, 2), np.int64))
    rng = np.random.default_rng(0)
    w.detail[..., 0] = 8 << ctx.SHIFT
    w.detail[..., 1:] = rng.integers(0, 1 << (ctx.SHIFT - 3), w.detail[..., 1:].shape)
    w.ll[:, 0] = 12 << ctx.SHIFT
    w.ll[1:, 1] = 1 << (ctx.SHIFT - 3)
    return CodingModel(w, TABLES)


def _random_subbands(rng, rows, cols, levels, scale=4.0):
    bands = [np.round(rng.normal(100, 50, (rows >> levels, cols >> levels))).astype(np.int64)]
    for lv in range(levels, 0, -1):
        s = (rows >> lv, cols >> lv)
        bands.append(tuple(np.round(rng.laplace(0, scale / lv, s)).astype(np.int64) for _ in range(3)))
    return bands


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 3))
def test_subband_round_trip(seed, mult, levels):
    rng = np.random.default_rng(seed)
    rows, cols = (8 * mult) << levels >> 1, (4 * (mult + 1)) << levels >> 1
    rows, cols = max(rows, 1 << levels), max(cols, 1 << levels)
    bands = _random_subbands(rng, rows, cols, levels)
    model = _model(levels)
    data = encode_subbands(bands, model)
    shapes = [bands[0].shape] + [tuple(b.shape for b in t) for t in bands[1:]]
    back = decode_subbands(data, shapes, model)
    assert np.array_equal(back[0], bands[0])
    for a, b in zip(bands[1:], back[1:]):
        for x, y in zip(a, b):
            assert np.array_equal(x, y)
    est = estimate_bits(bands, model)
    assert abs(8 * len(data) - est) <= 0.01 * est + 64


def test_rdo_never_moves_away_from_zero_and_decodes():
    rng = np.random.default_rng(3)
    levels = 2
    bands = _random_subbands(rng, 32, 32, levels, scale=2.0)
    coeffs = [bands[0].astype(float)] + [tuple(b + rng.uniform(-0.5, 0.5, b.shape) for b in t) for t in bands[1:]]
    model = _model(levels)
    fin = []
    data = encode_subbands(bands, model, coeffs=coeffs, lam=0.5, bias=0.0, rdo_out=fin)
    shapes = [bands[0].shape] + [tuple(b.shape for b in t) for t in bands[1:]]
    back = decode_subbands(data, shapes, model)
    for a, b, c in zip(bands[1:], fin[1:], back[1:]):
        for x, y, z in zip(a, b, c):
            assert np.all(np.abs(y) <= np.abs(x)) and np.all(np.abs(x - y) <= 1)
            assert np.array_equal(y, z)


def test_table_index_is_integer_exact():
    f = np.array([[1, 2**20, 5, 7, 0, 3, 9]], dtype=np.int64)
    w = np.array([3 << ctx.SHIFT, 1, -2, 4, 0, 5, 6], dtype=np.int64)
    acc = int(f[0] @ w)
    expect = min(max((acc + (1 << (ctx.SHIFT - 1))) >> ctx.SHIFT, 0), 63)
    assert ctx.table_index(f, w, 64)[0] == expect


def test_corrupt_stream_does_not_crash_silently():
    rng = np.random.default_rng(4)
    bands = _random_subbands(rng, 16, 16, 2)
    model = _model(2)
    data = bytearray(encode_subbands(bands, model))
    with pytest.raises(ValueError):
        decode_subbands(bytes(data[:-1]), [bands[0].shape] + [tuple(b.shape for b in t) for t in bands[1:]], model)


def _hidden_model(levels=3, hidden=4, seed=5):
    base = _model(levels).weights
    rng = np.random.default_rng(seed)
    shape = (levels, 3, 3, hidden)
    w = ctx.ContextWeights(base.detail, base.ll,
                           hidden=rng.integers(-(1 << 16), 1 << 16, shape + (ctx.NUM_FEATURES,)),
                           hidden_bias=rng.integers(-(1 << 20), 1 << 20, shape),
                           out=rng.integers(-(1 << 12), 1 << 12, shape))
    return CodingModel(w, TABLES)


def test_hidden_layer_index_is_the_integer_formula():
    model = _hidden_model()
    w = model.weights
    rng = np.random.default_rng(7)
    f = np.concatenate([np.ones((200, 1), np.int64), rng.integers(0, 40, (200, ctx.NUM_FEATURES - 1))], axis=1)
    got = model.detail_index(f, 2, 1, 2)
    half = 1 << (ctx.SHIFT - 1)
    for row, k in zip(f, got):
        acc = int(row @ w.detail[1, 1, 2])
        for j in range(w.hidden.shape[3]):
            pre = int(row @ w.hidden[1, 1, 2, j]) + int(w.hidden_bias[1, 1, 2, j])
            acc += int(w.out[1, 1, 2, j]) * max((pre + half) >> ctx.SHIFT, 0)
        assert k == min(max((acc + half) >> ctx.SHIFT, 0), model.num_scales - 1)
    assert len(set(got.tolist())) > 3  # the indices spread over the tables


def test_hidden_layer_round_trips_and_saves(tmp_path):
    from edge_runtime.bundle import load_bundle, save_bundle

    model = _hidden_model(levels=2)
    rng = np.random.default_rng(8)
    bands = _random_subbands(rng, 32, 48, 2)
    data = encode_subbands(bands, model)
    shapes = [bands[0].shape] + [tuple(b.shape for b in t) for t in bands[1:]]
    back = decode_subbands(data, shapes, model)
    for a, b in zip(bands[1:], back[1:]):
        for x, y in zip(a, b):
            assert np.array_equal(x, y)
    assert np.array_equal(back[0], bands[0])
    save_bundle(tmp_path, {"codec": {}}, model.weights, TABLES)
    loaded = load_bundle(tmp_path).coding.weights
    for name in ("detail", "ll", "hidden", "hidden_bias", "out"):
        assert np.array_equal(getattr(loaded, name), getattr(model.weights, name))
    with pytest.raises(ValueError, match="together"):
        ctx.ContextWeights(model.weights.detail, model.weights.ll, hidden=model.weights.hidden)
