"""Entropy coding of one plane's quantized wavelet subbands: context model + range coder.

Stream layout (little-endian): int32 LL mean, then the range coder's 32-bit words.
Inside the range-coded data, every pass starts with two table-index offsets chosen by
the encoder for this image (each a uniform 6-bit symbol): one added to every index of
the pass, one added on top where the whole context is zero (flat background, where a
trained model's guess is least certain). Then the pass's symbols follow, grouped by table.
The geometry (subband shapes) is not in this stream: the container records the plane
size and the decomposition, from which both sides derive the shapes.
"""
from __future__ import annotations

import struct

import numpy as np

from edge_runtime import context as ctx
from edge_runtime.entropy import Decoder, Encoder, EntropyTables

OFFSET_ALL = (-32, 31)
OFFSET_ZERO = (-48, 15)
_CAP = 64


class CodingModel:
    """What both sides need to code subbands: integer context weights and integer tables."""

    def __init__(self, weights: ctx.ContextWeights, tables: EntropyTables):
        self.weights = weights
        self.tables = tables
        self._cost = None
        self._zero_index = {}  # (level, orientation, phase) -> the index of an all-zero context

    @property
    def num_scales(self) -> int:
        return self.tables.num_tables

    def detail_index(self, features: np.ndarray, level: int, orientation: int, phase: int,
                     zero: np.ndarray | None = None) -> np.ndarray:
        """Table indices of a detail pass (level, orientation, phase) from its feature rows (the first, 1 on every
        row, as DetailBandContext and detail_features make them).

        `zero` (optional, zero_context of the rows): rows whose context is all zero share one index, that of
        the constant feature alone, computed once per (level, orientation, phase) and kept; the network runs
        on the other rows only (most rows of smooth or predicted content). Rows are independent: the same
        indices."""
        index = lambda f: self.weights.group_index(f, level, orientation, phase, self.num_scales, constant_first=True)
        if zero is None or 2 * int(np.count_nonzero(zero)) <= len(zero):  # worth it when most rows are zero
            return index(features)
        key = (level, orientation, phase)
        if key not in self._zero_index:  # such a row is the constant feature alone: one index per pass group
            row = np.zeros((1, features.shape[1]), np.asarray(features).dtype)
            row[0, 0] = 1
            self._zero_index[key] = int(index(row)[0])
        out = np.full(len(zero), self._zero_index[key], np.int64)
        rest = np.flatnonzero(~zero)
        if rest.size:  # the rows gathered feature by feature (column-major features: contiguous gathers)
            out[rest] = index(np.take(np.asarray(features).T, rest, axis=1).T)
        return out

    def cost_matrix(self) -> np.ndarray:
        """Bits of |symbol| = 0.._CAP-1 (the last column: a typical large value) under every table."""
        if self._cost is None:
            s = np.arange(_CAP)
            s[-1] = 4 * _CAP
            self._cost = np.stack([self.tables.symbol_bits(s, np.full(_CAP, k)) for k in range(self.num_scales)])
        return self._cost


def _walk(subbands, model: CodingModel, visit, on_level=None):
    """Drive the coding order; `visit(key, indices, pred, at, features, zero)` codes one pass.

    `at` are the flat (row-major) positions of the pass in its band, `zero` its zero_context
    flags (computed once per pass, for the context model and the coder). `visit` returns the
    (decoded or given) values of the pass, so the same walk serves the encoder (values known
    up front) and the decoder (values appear pass by pass). `on_level(i, bands)`, if given, is
    called as soon as LL (i = 0) and then each level's (H, V, D) (i = 1, coarsest, ...) are complete.
    """
    levels = len(subbands) - 1
    decoded = [np.zeros_like(subbands[0])] + [tuple(np.zeros_like(b) for b in subbands[i])
                                              for i in range(1, levels + 1)]
    ll = decoded[0]
    known = np.zeros(ll.shape, bool)
    for phase in range(3):
        mask = ctx.phase_masks(ll.shape)[phase]
        pred, spread = ctx.ll_prediction(ll, phase, known)
        idx = ctx.ll_index(spread, phase, model.weights, model.num_scales)
        ll[mask] = visit(("LL", phase), idx, pred, ctx.phase_positions(ll.shape)[phase][0], None,
                         zero_context(None, len(idx)))
        known |= mask
    if on_level is not None:
        on_level(0, ll)
    codes = {}  # (i, o) -> magnitude codes of a completed band
    for i in range(1, levels + 1):
        level = levels - i + 1
        for o in range(3):
            band = decoded[i][o]
            bc = ctx.DetailBandContext(band.shape, codes.get((i - 1, o)), [codes[(i, s)] for s in range(o)])
            flat_band = band.reshape(-1)
            for phase in range(3):
                f = bc.features(phase)
                zero = zero_context(f, len(f))
                idx = model.detail_index(f, level, o, phase, zero)
                at = bc.positions[phase][0]
                vals = visit((level, o, phase), idx, None, at, f, zero)
                flat_band[at] = vals
                bc.set(phase, vals)
            codes[(i, o)] = bc.codes
        if on_level is not None:
            on_level(i, decoded[i])
    return decoded


def _source_band(src, key):
    if key[0] == "LL":
        return src[0]
    level, o, _ = key
    return src[len(src) - level][o]


def zero_context(features: np.ndarray | None, n: int) -> np.ndarray:
    """Positions whose whole context (every feature but the constant) is zero; none in LL (features None).

    Features are never negative: their sum is zero exactly where all are (in float64 too: integers)."""
    if features is None:
        return np.zeros(n, bool)
    any_set = features[:, 1].copy()
    combine = np.add if any_set.dtype.kind == "f" else np.bitwise_or
    for j in range(2, features.shape[1]):  # column by column: several times faster than a reduce along rows
        combine(any_set, features[:, j], out=any_set)
    return any_set == 0


def adjust_indices(idx, zero_ctx, o_all, o_zero, num_scales):
    """Table indices after a pass's two offsets (all positions / zero-context positions), clipped to the tables."""
    out = np.add(idx, o_all, dtype=np.int64)
    if o_zero:
        np.add(out, o_zero, out=out, where=zero_ctx)  # one pass (a boolean index would gather and scatter)
    np.maximum(out, 0, out=out)
    return np.minimum(out, num_scales - 1, out=out)


def coded_indices(symbols, idx, features, model: "CodingModel") -> np.ndarray:
    """The indices the encoder codes a pass with: the context model's, moved by the chosen offsets."""
    zero = zero_context(features, len(idx))
    return adjust_indices(idx, zero, *choose_offsets(symbols, idx, zero, model), model.num_scales)


def choose_offsets(symbols, idx, zero_ctx, model: CodingModel) -> tuple[int, int]:
    """The two offsets that minimise the pass's estimated bits (histogram over table × |symbol|)."""
    k_count = model.num_scales
    cost = model.cost_matrix()
    key = idx * _CAP + np.minimum(np.abs(symbols), _CAP - 1)  # (table, |symbol|) of each position

    def best(sel, base_shift, lo, hi):
        if sel is not None and not sel.any():
            return 0
        hist = np.bincount(key if sel is None else key[sel], minlength=k_count * _CAP).reshape(k_count, _CAP)
        rows = np.nonzero(hist.any(1))[0]
        per_table = hist[rows].astype(np.float64) @ cost.T  # (n_rows, tables): a row's symbols under each table
        offs = np.arange(lo, hi + 1)
        tgt = np.clip(rows[None, :] + base_shift + offs[:, None], 0, k_count - 1)  # (n_off, n_rows)
        bits = per_table[np.arange(len(rows))[None, :], tgt].sum(axis=1)
        return int(offs[np.argmin(bits)]) if bits.min() < bits[offs == 0][0] else 0

    o_all = best(None, 0, *OFFSET_ALL)
    o_zero = best(zero_ctx, o_all, *OFFSET_ZERO)
    return o_all, o_zero


def _prepare(subbands):
    subbands = [np.array(subbands[0], np.int64, order="C")] + [tuple(np.array(b, np.int64, order="C") for b in s)
                                                               for s in subbands[1:]]
    mean = int(np.round(subbands[0].mean())) if subbands[0].size else 0
    return [subbands[0] - mean] + subbands[1:], mean


def encode_subbands(subbands, model: CodingModel, *, coeffs=None, lam: float = 0.0,
                    bias: float = 0.0, rdo_out: list | None = None, stats: dict | None = None) -> bytes:
    """Code [LL, (H, V, D) coarse→fine] integer subbands into bytes.

    With `coeffs` (the unquantized detail coefficients in quantizer steps, same layout)
    and `lam` > 0, each detail coefficient may be lowered by one step toward zero when
    that saves more rate than it costs in distortion (rate-distortion optimized
    quantization, decided pass by pass with the exact table each coefficient is coded
    with). The decoder is unchanged. `rdo_out`, if given, receives the final subbands;
    `stats`, if given, gets "estimated_bits": the model's code length of this stream.
    """
    src, mean = _prepare(subbands)
    enc = Encoder(model.tables, track=stats is not None)

    def visit(key, idx, pred, at, f, zero_ctx):
        band = _source_band(src, key)
        vals = np.take(band, at)
        p = pred if pred is not None else 0
        o_all, o_zero = choose_offsets(vals - p, idx, zero_ctx, model)
        idx = adjust_indices(idx, zero_ctx, o_all, o_zero, model.num_scales)
        if coeffs is not None and lam > 0 and key[0] != "LL":
            vals = _rdo_pass(vals, np.take(_source_band(coeffs, key), at), idx, model.tables, lam, bias)
            band.reshape(-1)[at] = vals
        enc.encode_uniform([o_all - OFFSET_ALL[0], o_zero - OFFSET_ZERO[0]], 64)
        enc.encode(vals - p, idx, model.num_scales)
        return vals

    _walk(src, model, visit)
    if rdo_out is not None:
        rdo_out[:] = [src[0] + mean] + src[1:]
    if stats is not None:
        stats["estimated_bits"] = stats.get("estimated_bits", 0.0) + 32 + enc.estimated_bits
    return struct.pack("<i", mean) + enc.getvalue()


def _rdo_pass(q: np.ndarray, x: np.ndarray, idx: np.ndarray, tables, lam: float, bias: float) -> np.ndarray:
    nz = np.flatnonzero(q)  # only non-zero coefficients can be lowered
    if not nz.size:
        return q
    qn, xn, kn = q[nz], x[nz], idx[nz]
    alt = qn - np.sign(qn)
    deq = lambda v: np.sign(v) * (np.abs(v) + bias)
    d0 = (xn - deq(qn)) ** 2
    d1 = (xn - deq(alt)) ** 2
    better = d1 + lam * tables.symbol_bits(alt, kn) < d0 + lam * tables.symbol_bits(qn, kn)
    out = q.copy()
    out[nz[better]] = alt[better]
    return out


def decode_subbands(data: bytes, shapes, model: CodingModel, on_level=None):
    """Inverse of encode_subbands; `shapes` is [LL shape, (H, V, D shapes), ...]. `on_level(i, bands)`, if given,
    receives LL (i = 0) and then each level's (H, V, D) (i = 1, coarsest, ...) as soon as they are decoded (the
    synthesis of the coarser levels may then run while the finer ones decode)."""
    if len(data) < 4:
        raise ValueError("subband stream shorter than its 4-byte header")
    (mean,) = struct.unpack_from("<i", data, 0)
    # _walk reads only the shapes and type of its `subbands` (it decodes into arrays of its own)
    template = [np.empty(shapes[0], np.int64)] + [tuple(np.empty(s, np.int64) for s in lv) for lv in shapes[1:]]
    dec = Decoder(model.tables, data[4:])

    def visit(_key, idx, pred, _at, _f, zero):
        o = dec.decode_uniform(2, 64)
        idx = adjust_indices(idx, zero, int(o[0]) + OFFSET_ALL[0], int(o[1]) + OFFSET_ZERO[0],
                             model.num_scales)
        v = dec.decode(idx, model.num_scales)  # adjust_indices: 0 <= idx < num_scales
        return v if pred is None else v + pred

    level_done = None
    if on_level is not None:
        level_done = lambda i, bands: on_level(i, bands + mean if i == 0 else bands)
    out = _walk(template, model, visit, level_done)
    out[0] = out[0] + mean
    return out


def collect(subbands, model: CodingModel):
    """Every pass's (key, features, symbols, indices) for fitting the context weights; no coding.

    Features are None for the LL passes (coded around a prediction, not from features).
    """
    src, _mean = _prepare(subbands)
    rows = []

    def visit(key, idx, pred, at, f, _zero):
        vals = np.take(_source_band(src, key), at)
        rows.append((key, f, vals - (pred if pred is not None else 0), idx))
        return vals

    _walk(src, model, visit)
    return rows


def estimate_bits(subbands, model: CodingModel) -> float:
    """Bits of the stream with the encoder's offsets (the coder adds at most a few words)."""
    total = 32.0
    for _key, f, sym, idx in collect(subbands, model):
        total += 12 + model.tables.bits(sym, coded_indices(sym, idx, f, model))
    return total
