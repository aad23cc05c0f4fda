"""Error-bounded and lossless coding: the residual against a base reconstruction.

With a bound D (stored pixel units, D = 0 is lossless) the encoder codes a plane at some
base quality with the wavelet codec, reconstructs it exactly as the decoder will (numpy
float64 lifting, edge_runtime.exact_dwt, rounded to the integer grid: ``base``), and
codes the residual ``r = x - base`` quantized with step ``s = 2D + 1``:

    e = sign(r) * floor((|r| + D) / s)        x' = clip(base + s * e, lo, hi)

so |x - x'| <= D on every pixel by construction (clipping to the plane's own [lo, hi],
which holds x, only moves x' closer).

The residual e is coded in five vectorized passes over a polyphase split (PASSES): the
4×4 lattice, its centres, the rest of the even lattice, the odd-odd positions, the rest;
each pass sees the residuals of the passes before it. After the first pass the symbol
coded is e minus an integer prediction from the pass's decoded neighbours:
    pred = (c · Σ neighbours + 2**(PRED_SHIFT+1)) >> (PRED_SHIFT + 2),  c = 16·(k − 8)
where the encoder picks k in 0..31 per pass (least squares on the pass, rounded) and
sends it first as a uniform 5-bit symbol: how correlated the residual of a base is
depends on the image and on the base quality. Each symbol gets a table index from an
integer context model, as the subbands do (edge_runtime.context):
    k = clip((w · f + 2**(SHIFT-1)) >> SHIFT, 0, num_scales - 1)
with one weight vector per pass and f = (1, activity sum, activity max, spatial sum,
spatial max, local level): the magnitude codes (context.mag_code) of the base's absolute
differences to its 4 direct neighbours (in units of s; sum and max), of the pass's
decoded residual neighbours (sum and max), and the mean code of the decoded residuals in
the 5×5 window. Every pass then sends the same two 6-bit index offsets as the subband
passes (all positions / zero-context positions), chosen by the encoder. The tables are
Laplacians through a uniform quantizer (no deadzone). Everything is int64 arithmetic:
the same indices on every CPU.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from edge_runtime import context as ctx
from edge_runtime.entropy import PRECISION, Decoder, Encoder, EntropyTables
from edge_runtime.subband_coder import (OFFSET_ALL, OFFSET_ZERO, CodingModel, adjust_indices, choose_offsets,
                                        zero_context)

__all__ = ["NUM_FEATURES", "PRED_SHIFT", "ResidualModel", "decode_residual", "dequantize", "encode_residual",
           "choose_prediction", "features", "neighbour_sum", "prediction", "quantize", "reconstruct_base"]

NUM_FEATURES = 6
PRED_SHIFT = 8
RESIDUAL_FILE = "residual.npz"


@dataclass
class ResidualModel:
    """Integer weights (NUM_PASSES × NUM_FEATURES) and the integer tables of the residual."""

    weights: np.ndarray
    tables: EntropyTables

    def __post_init__(self):
        self.weights = np.asarray(self.weights, dtype=np.int64)
        if self.weights.shape != (NUM_PASSES, NUM_FEATURES):
            raise ValueError(f"residual weights must be ({NUM_PASSES}, {NUM_FEATURES}), got {self.weights.shape}")
        self.coding = CodingModel(None, self.tables)  # offsets' cost matrix and table count

    def to_arrays(self) -> dict:
        return {"weights": self.weights, **self.tables.to_arrays("table_")}

    @classmethod
    def from_arrays(cls, arrays) -> "ResidualModel":
        return cls(np.asarray(arrays["weights"]), EntropyTables.from_arrays(arrays, "table_"))


def quantize(r: np.ndarray, max_error: int) -> np.ndarray:
    """Residual (int64) -> symbols e with |r - (2D+1)·e| <= D."""
    s = 2 * int(max_error) + 1
    return np.sign(r) * ((np.abs(r) + int(max_error)) // s)


def dequantize(base: np.ndarray, e: np.ndarray, max_error: int, lo: int, hi: int) -> np.ndarray:
    return np.clip(base + (2 * int(max_error) + 1) * e, lo, hi)


def reconstruct_base(y: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Normalized base plane (float64, [0, 1] = [lo, hi]) -> stored integers, clipped to [lo, hi]."""
    scale = float(max(hi - lo, 1))
    return np.clip(np.round(np.asarray(y, np.float64) * scale + lo), lo, hi).astype(np.int64)


def _activity(base: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes of the sum and of the max of |base - neighbour| // s over the 4 direct neighbours (mirrored)."""
    p = ctx._pad1(base)
    rows, cols = base.shape
    total = top = None
    for dr, dc in ctx.DIRECT:
        d = np.abs(base - p[1 + dr:1 + dr + rows, 1 + dc:1 + dc + cols])
        d //= s
        if total is None:
            total, top = d, d.copy()
        else:
            total += d
            np.maximum(top, d, out=top)
    return ctx.mag_code(total), ctx.mag_code(top)


# The passes: (row modulus, col modulus, positions (r, c) of the pass within the modulus, neighbour
# offsets already decoded). A 4x4 lattice first, then its centres, then the rest of the even
# lattice, then odd-odd, then the rest: only 1/16 of the positions have no decoded neighbour.
_D2 = tuple((2 * a, 2 * b) for a, b in ctx.DIAG)
_N2 = tuple((2 * a, 2 * b) for a, b in ctx.DIRECT)
PASSES = (
    (((0, 0),), 4, ()),
    (((2, 2),), 4, _D2),
    (((0, 2), (2, 0)), 4, _N2),
    (((1, 1),), 2, ctx.DIAG),
    (((0, 1), (1, 0)), 2, ctx.DIRECT),
)
NUM_PASSES = len(PASSES)


def pass_mask(shape, p: int) -> np.ndarray:
    """The positions of pass p (read-only, cached per shape)."""
    return _pass_mask(tuple(int(n) for n in shape), p)


@functools.lru_cache(maxsize=64)
def _pass_mask(shape: tuple, p: int) -> np.ndarray:
    where, m, _ = PASSES[p]
    r = (np.arange(shape[0]) % m)[:, None]
    c = (np.arange(shape[1]) % m)[None, :]
    mask = np.zeros(shape, bool)
    for a, b in where:
        mask |= (r == a) & (c == b)
    if m == 4:  # the 4x4 passes cover the even lattice only
        mask &= ((r % 2) == 0) & ((c % 2) == 0)
    mask.setflags(write=False)
    return mask


def _shift(a: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """a[i+dr, j+dc], zero outside the plane."""
    out = np.zeros_like(a)
    h, w = a.shape
    out[max(0, -dr):min(h, h - dr), max(0, -dc):min(w, w - dc)] = \
        a[max(0, dr):min(h, h + dr), max(0, dc):min(w, w + dc)]
    return out


def _neighbours(a: np.ndarray, p: int) -> np.ndarray:
    offs = PASSES[p][2]
    return np.stack([_shift(a, dr, dc) for dr, dc in offs]) if offs else np.zeros((1,) + a.shape, a.dtype)


def _box_sum(a: np.ndarray, radius: int) -> np.ndarray:
    """Sum of `a` over the (2·radius+1)² window around each position (zero outside), via integral images."""
    k = 2 * radius + 1
    c = np.zeros((a.shape[0] + k, a.shape[1] + k), np.int64)
    c[1:, 1:] = np.pad(a, radius).cumsum(0).cumsum(1)
    h, w = a.shape
    return c[k:k + h, k:k + w] - c[:h, k:k + w] - c[k:k + h, :w] + c[:h, :w]


def features(e_known: np.ndarray, known: np.ndarray, activity, p: int) -> np.ndarray:
    """Feature matrix (n, NUM_FEATURES) for the positions of pass p (neighbours outside the plane count 0)."""
    mask = pass_mask(e_known.shape, p)
    codes = np.where(known, ctx.mag_code(e_known), 0)
    nb = _neighbours(codes, p)
    # the mean code of the decoded residuals in the 5x5 window: the local noise level
    local = _box_sum(codes, 2) // np.maximum(_box_sum(known.astype(np.int64), 2), 1)
    cols = [np.ones(e_known.shape, np.int64), activity[0], activity[1], nb.sum(0), nb.max(0), local]
    return np.stack([c[mask] for c in cols], axis=1)


def neighbour_sum(e_known: np.ndarray, p: int) -> np.ndarray:
    """Sum of the already-decoded neighbours of pass p (zero for the first pass)."""
    return _neighbours(e_known, p).sum(0)


PRED_CODES = 32


def prediction(nb_sum: np.ndarray, k: int) -> np.ndarray:
    """The integer prediction with coefficient code k (c = 16·(k − 8) / 2**PRED_SHIFT)."""
    c = 16 * (int(k) - 8)
    return (c * nb_sum + (1 << (PRED_SHIFT + 1))) >> (PRED_SHIFT + 2)


def choose_prediction(vals: np.ndarray, nb_sum: np.ndarray) -> int:
    """The coefficient code k (0..PRED_CODES-1) nearest the least-squares fit of vals on nb_sum / 4."""
    m = nb_sum.astype(np.float64) / 4.0
    mm = float(m @ m)
    c = float(vals.astype(np.float64) @ m) / mm if mm > 0 else 0.0
    return int(np.clip(np.round(c * (1 << PRED_SHIFT) / 16.0) + 8, 0, PRED_CODES - 1))


@functools.lru_cache(maxsize=4)
def _geometry(shape: tuple) -> tuple:
    """Per pass: flat positions (in `pass_mask` order), the same positions in the plane padded by
    PAD zeros, how many positions of the 5x5 window around each are decoded before the pass, the
    flat positions of each window's corner in the integral image of the padded plane (see `_walk`),
    and the padded positions of the pass's decoded neighbours.

    A pass's positions are one or two grids (rows a, a + m, ... x columns b, b + m, ...), and so are the
    passes before it: the decoded positions in a window are, summed over those grids, the product of how
    many of a grid's rows and how many of its columns the window spans. Every array is a row term plus a
    column term, formed by broadcasting (int32 where they fit: half the memory)."""
    rows, cols = shape
    stride = cols + 2 * _PAD
    index = np.int32 if (rows + 2 * _PAD + 1) * (cols + 2 * _PAD + 1) < 1 << 31 else np.int64
    out, before = [], []
    for where, m, offsets in PASSES:
        grids = [_pass_grid(rows, cols, m, a, b, offsets, before, index) for a, b in where]
        merged = [ctx.interleave_rows(*arrays) for arrays in zip(*grids)]
        out.append((merged[0], merged[1], merged[2], merged[3], tuple(merged[4:])))
        before += [(m, a, b) for a, b in where]
    return tuple(out)


def _pass_grid(rows: int, cols: int, m: int, a: int, b: int, offsets, before: list, index) -> list:
    """_geometry's arrays (positions, padded positions, decoded count, corner, neighbours...) of the grid
    (a + m k, b + m l), each 2-D (grid rows, grid columns); `before`: the (m, a, b) grids decoded earlier."""
    rr = np.arange(a, rows, m, dtype=index)[:, None]
    cc = np.arange(b, cols, m, dtype=index)[None, :]
    stride = index(cols + 2 * _PAD)
    padded = (rr + _PAD) * stride + (cc + _PAD)
    count = np.zeros((rr.size, cc.size), np.int32)
    for m2, a2, b2 in before:
        count += _spanned(rr, rows, m2, a2) * _spanned(cc, cols, m2, b2)
    arrays = [rr * index(cols) + cc, padded, np.maximum(count, 1), rr * (stride + 1) + cc]
    return arrays + [padded + index(dr * int(stride) + dc) for dr, dc in offsets]


def _spanned(v: np.ndarray, n: int, m: int, a: int) -> np.ndarray:
    """How many of 0..n-1 that are a mod m lie within 2 of each of `v` (the 5x5 window's rows or columns)."""
    below = lambda x: np.maximum((x - a + m - 1) // m, 0)  # how many of 0..x-1 are a mod m
    return (below(np.minimum(v + 3, n)) - below(np.maximum(v - 2, 0))).astype(np.int32)


_PAD = 2


def _walk(base: np.ndarray, max_error: int, model: ResidualModel, visit) -> np.ndarray:
    """NUM_PASSES passes; `visit(pass, indices, features, nb_sum)` returns the pass's residual values.

    The features and neighbour sums are those of `features` and `neighbour_sum`, computed at the
    pass's positions only (the pass geometry is cached per plane shape): the decoded residuals and
    their codes are kept in planes padded by _PAD zeros, so neighbours are gathers, and the 5x5 window
    sums come from the integral image of the padded codes. Feature matrices are column-major."""
    activity = [a.ravel() for a in _activity(base, 2 * int(max_error) + 1)]
    rows, cols = base.shape
    e = np.zeros((rows + 2 * _PAD, cols + 2 * _PAD), np.int64)
    codes = np.zeros_like(e)
    integral = np.zeros((rows + 2 * _PAD + 1, cols + 2 * _PAD + 1), np.int64)
    k = 2 * _PAD + 1
    w = cols + 2 * _PAD + 1
    for phase, (flat, padded, count, corner, neighbours) in enumerate(_geometry(tuple(base.shape))):
        f = np.empty((len(flat), NUM_FEATURES), np.int64, order="F")
        f[:, 0] = 1
        np.take(activity[0], flat, out=f[:, 1])
        np.take(activity[1], flat, out=f[:, 2])
        if neighbours:
            ctx.gather_sum_max(codes.ravel(), neighbours, f[:, 3], f[:, 4])
            nb_sum = np.take(e, neighbours[0])
            for at in neighbours[1:]:
                nb_sum += np.take(e, at)
        else:
            f[:, 3:5] = 0
            nb_sum = np.zeros(len(flat), np.int64)
        # the mean code of the decoded residuals in the 5x5 window: the local noise level
        inner = integral[1:, 1:]
        np.cumsum(codes, axis=0, out=inner)
        np.cumsum(inner, axis=1, out=inner)
        ii = integral.ravel()
        f[:, 5] = (np.take(ii, corner + (k * w + k)) - np.take(ii, corner + k) - np.take(ii, corner + k * w)
                   + np.take(ii, corner)) // count
        idx = ctx.table_index(f, model.weights[phase], model.coding.num_scales)
        vals = visit(phase, idx, f, nb_sum)
        e.ravel()[padded] = vals
        codes.ravel()[padded] = ctx.mag_code(vals)
    return e[_PAD:_PAD + rows, _PAD:_PAD + cols].copy()


def _pass_values(e: np.ndarray, phase: int) -> np.ndarray:
    """e at the positions of `phase`, in pass order."""
    return np.take(e, _geometry(tuple(e.shape))[phase][0])


def encode_residual(e: np.ndarray, base: np.ndarray, max_error: int, model: ResidualModel,
                    stats: dict | None = None) -> bytes:
    """Range-coded residual symbols `e` (same shape as `base`)."""
    enc = Encoder(model.tables, track=stats is not None)

    def visit(phase, idx, f, nb):
        vals = _pass_values(e, phase)
        sym = vals
        if phase > 0:
            k = choose_prediction(vals, nb)
            enc.encode_uniform([k], PRED_CODES)
            sym = vals - prediction(nb, k)
        zero = zero_context(f, len(idx))
        o_all, o_zero = choose_offsets(sym, idx, zero, model.coding)
        enc.encode_uniform([o_all - OFFSET_ALL[0], o_zero - OFFSET_ZERO[0]], 64)
        enc.encode(sym, adjust_indices(idx, zero, o_all, o_zero, model.coding.num_scales))
        return vals

    _walk(base, max_error, model, visit)
    if stats is not None:
        stats["estimated_bits"] = stats.get("estimated_bits", 0.0) + enc.estimated_bits
    return enc.getvalue()


def decode_residual(data: bytes, base: np.ndarray, max_error: int, model: ResidualModel) -> np.ndarray:
    dec = Decoder(model.tables, data)

    def visit(phase, idx, f, nb):
        pred = prediction(nb, int(dec.decode_uniform(1, PRED_CODES)[0])) if phase > 0 else 0
        o = dec.decode_uniform(2, 64)
        sym = dec.decode(adjust_indices(idx, zero_context(f, len(idx)), int(o[0]) + OFFSET_ALL[0],
                                        int(o[1]) + OFFSET_ZERO[0], model.coding.num_scales))
        return sym + pred

    return _walk(base, max_error, model, visit)


def collect(e: np.ndarray, base: np.ndarray, max_error: int, model: ResidualModel) -> list:
    """Every pass's (phase, features, symbols after the encoder's prediction) for fitting; no coding."""
    rows = []

    def visit(phase, idx, f, nb):
        vals = _pass_values(e, phase)
        rows.append((phase, f, vals - prediction(nb, choose_prediction(vals, nb)) if phase > 0 else vals))
        return vals

    _walk(base, max_error, model, visit)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# The adaptive residual stream: the learned model as the prior, tables chosen for the image it codes.
#
# The learned context model's table index says how large a residual is likely to be; how large it really is
# on this image depends on the scanner, the dose, the noise level of each tissue. So the encoder groups the
# positions of each pass into buckets it shares with the decoder,
#     bucket = (learned index k, zero context z, intensity class c of the base),
# and chooses for every bucket that occurs the table that codes its symbols in the fewest bits (two passes over
# the image: collect, then code). The stream sends, first, the class count code (uniform over
# len(ADAPTIVE_CLASSES)); then per pass: the prediction code (passes after the first, as in encode_residual),
# one table number per occurring bucket in increasing bucket order (uniform over the table count), and the
# symbols. The intensity classes split the base's values at the quantiles the decoder computes from the base
# (integer thresholds), so noise that grows with the signal (quantum noise in radiographs, CT through bone)
# gets its own tables. Everything is integer: the same buckets and tables on every CPU.

ADAPTIVE_CLASSES = (1, 2, 4, 8, 16)
"""Intensity class counts the encoder may choose (per tile; it sends the position in this list)."""


def intensity_classes(base: np.ndarray, count: int, sorted_base: np.ndarray | None = None) -> np.ndarray:
    """Flat class (0..count-1) of every position: the base split at its count-quantiles (integer thresholds).

    `sorted_base` (optional): the base's values already sorted, shared by several counts."""
    flat = np.asarray(base, np.int64).ravel()
    if count <= 1 or flat.size == 0:
        return np.zeros(flat.size, np.int64)
    ranks = (np.arange(1, count, dtype=np.int64) * flat.size) // count
    if sorted_base is not None:
        thresholds = sorted_base[ranks]
    else:  # the values at those ranks of the sorted base, from its histogram (no sort)
        lo = int(flat.min())
        below = np.cumsum(np.bincount(flat - lo))  # below[v - lo]: how many values are <= v
        thresholds = lo + np.searchsorted(below, ranks, side="right")
    return np.searchsorted(thresholds, flat, side="right").astype(np.int64)


def _bucket_keys(idx: np.ndarray, zero: np.ndarray, cls: np.ndarray, count: int) -> np.ndarray:
    return (idx * 2 + zero) * count + cls


_MAG_EXACT = 64
_MAG_BINS = 48


def _mag_bin(mag: np.ndarray) -> np.ndarray:
    """Magnitude -> cost bin: exact below _MAG_EXACT, then quarter-octave bins (rate estimates only)."""
    big = mag >= _MAG_EXACT
    out = np.minimum(mag, _MAG_EXACT - 1)
    if big.any():
        o = np.log2(mag[big] / _MAG_EXACT) * 4
        out[big] = _MAG_EXACT + np.minimum(o.astype(np.int64), _MAG_BINS - 1)
    return out


@functools.lru_cache(maxsize=4)
def _bin_costs(tables) -> np.ndarray:
    """(tables, bins) bits of one symbol of each magnitude bin under each table (bin's centre magnitude)."""
    centres = np.concatenate([np.arange(_MAG_EXACT), np.round(_MAG_EXACT * 2.0 ** ((np.arange(_MAG_BINS) + 0.5) / 4))])
    centres = centres.astype(np.int64)
    return np.stack([tables.symbol_bits(centres, np.full(centres.size, k)) for k in range(tables.num_tables)])


def _bucket_choice(keys: np.ndarray, bins: np.ndarray, num_keys: int, costs: np.ndarray,
                   first: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(occurring buckets ascending, best table of each, estimated bits of the symbols); keys < num_keys.
    With `first`, also (best table among the first `first` only, its estimated bits) after those."""
    nbins = costs.shape[1]
    hist = np.bincount(keys * nbins + bins, minlength=num_keys * nbins).reshape(num_keys, nbins)
    buckets = np.flatnonzero(hist.any(1))
    per = hist[buckets].astype(np.float64) @ costs.T  # (buckets, tables)
    rows = np.arange(buckets.size)
    best = per.argmin(1)
    out = (buckets, best, float(per[rows, best].sum()))
    if first is not None:
        best_first = per[:, :first].argmin(1)
        out += (best_first, float(per[rows, best_first].sum()))
    return out


def _num_keys(tables, count: int) -> int:
    return tables.num_tables * 2 * count


_SHIFT_CODES = 128


def _choice_plan(delta: np.ndarray, tables) -> tuple[int, int]:
    """(shift, table) coding the per-bucket deltas (chosen table - learned index) in the fewest bits."""
    shift = int(np.clip(np.sort(delta)[delta.size // 2], -_SHIFT_CODES // 2, _SHIFT_CODES // 2 - 1)) if delta.size else 0
    d = delta - shift
    k = np.arange(tables.num_tables)[:, None]
    return shift, int(np.argmin(tables.symbol_bits(np.broadcast_to(d, (k.size, d.size)), k).sum(1)))


def _choice_bits(delta: np.ndarray, tables) -> float:
    shift, t = _choice_plan(delta, tables)
    return np.log2(_SHIFT_CODES) + np.log2(tables.num_tables) + tables.bits(delta - shift, np.full(delta.size, t))


def _encode_choice(enc, delta: np.ndarray, tables) -> None:
    """A pass's bucket tables as deltas to their learned index: a shift (uniform), a table, the deltas."""
    shift, t = _choice_plan(delta, tables)
    enc.encode_uniform([shift + _SHIFT_CODES // 2, t], max(_SHIFT_CODES, tables.num_tables))
    enc.encode(delta - shift, np.full(delta.size, t))


def _decode_choice(dec, n: int, tables) -> np.ndarray:
    shift, t = (int(v) for v in dec.decode_uniform(2, max(_SHIFT_CODES, tables.num_tables)))
    if t >= tables.num_tables:
        raise ValueError(f"adaptive residual stream names table {t} of {tables.num_tables}")
    return dec.decode(np.full(n, t)) + shift - _SHIFT_CODES // 2


SHAPE_MAX_TAIL = 1024
"""Laplace tables up to this tail half-width get a lighter-tailed twin in shape_tables."""


@functools.lru_cache(maxsize=4)
def shape_tables(tables: EntropyTables) -> EntropyTables:
    """The model's K tables, then K more: each Laplacian convolved with itself (the distribution of the sum of
    two such residuals: rounder at the top, lighter-tailed, what residuals of Gaussian-like noise look like),
    computed from the integer tables in integer arithmetic, so every decoder builds the same frequencies.
    Tables with a tail beyond SHAPE_MAX_TAIL are repeated unchanged (the encoder then never picks the copy)."""
    freqs, tails = list(tables.freqs), list(int(t) for t in tables.tails)
    for k in range(tables.num_tables):
        t = int(tables.tails[k])
        if t > SHAPE_MAX_TAIL:
            freqs.append(tables.freqs[k])
            tails.append(t)
            continue
        c = np.convolve(tables.freqs[k][:-1], tables.freqs[k][:-1])  # exact: below 2**59 in int64
        c = c >> max(int(c.max()).bit_length() - 38, 0)  # so that c * spare stays below 2**62
        spare = (1 << PRECISION) - (len(c) + 1)
        q = (c * spare) // int(c.sum())
        q[int(np.argmax(c))] += spare - int(q.sum())
        freqs.append(np.concatenate([q + 1, [1]]))
        tails.append(2 * t)
    return EntropyTables(freqs, np.array(tails, np.int64))


def adaptive_plan(e: np.ndarray, base: np.ndarray, max_error: int, model: ResidualModel,
                  shapes: bool = False) -> tuple:
    """The encoder's choices for residual symbols `e`: (estimated bits, class count code, per-pass
    (phase, prediction code, symbols), per-pass (bucket keys, occurring buckets, their tables)).

    With `shapes`, a bucket's table may also be one of shape_tables' lighter-tailed twins (numbers K..2K-1)."""
    passes = []

    def visit(phase, idx, f, nb):
        vals = _pass_values(e, phase)
        k = choose_prediction(vals, nb) if phase > 0 else 0
        sym = vals - prediction(nb, k) if phase > 0 else vals
        passes.append((phase, idx, zero_context(f, len(idx)).astype(np.int64), k, sym))
        return vals

    _walk(base, max_error, model, visit)
    tables = model.tables
    costs = _bin_costs(shape_tables(tables) if shapes else tables)
    geometry = _geometry(tuple(base.shape))
    bins = [_mag_bin(np.abs(p[4])) for p in passes]
    sorted_base = np.sort(base.ravel())
    best = None
    for code, count in enumerate(ADAPTIVE_CLASSES):
        cls = intensity_classes(base, count, sorted_base)
        plan, bits = [], 0.0
        for (phase, idx, zero, k, sym), b_ in zip(passes, bins):
            keys = _bucket_keys(idx, zero, cls[geometry[phase][0]], count)
            if shapes:  # per pass: with a family bit per bucket, or the Laplacians alone when that is cheaper
                buckets, choice, b, choice_lap, b_lap = _bucket_choice(keys, b_, _num_keys(tables, count), costs,
                                                                       tables.num_tables)
                if b_lap <= b + buckets.size:
                    choice, b = choice_lap, b_lap
                else:
                    b += buckets.size
                b += 1
            else:
                buckets, choice, b = _bucket_choice(keys, b_, _num_keys(tables, count), costs)
            plan.append((keys, buckets, choice))
            bits += b + _choice_bits(choice % tables.num_tables - buckets // (2 * count), tables)
        if best is None or bits < best[0]:
            best = (bits, code, plan)
        if count > 1 and bits > best[0]:  # the estimate rises with more classes from here on: stop
            break
    return best[0], best[1], [(p[0], p[3], p[4]) for p in passes], best[2]


def encode_residual_adaptive(e: np.ndarray, base: np.ndarray, max_error: int, model: ResidualModel,
                             stats: dict | None = None, shapes: bool = False) -> bytes:
    """Range-coded residual symbols `e` with per-image bucket tables (see ADAPTIVE_CLASSES).

    With `shapes` (a stream the decoder must be told about), a bucket's table may come from
    shape_tables: after the pass's table numbers, one uniform bit says whether the pass uses the
    lighter-tailed twins, and if so one uniform bit per bucket gives its family."""
    _bits, code, passes, plan = adaptive_plan(e, base, max_error, model, shapes)
    tables = model.tables
    enc = Encoder(shape_tables(tables) if shapes else tables, track=stats is not None)
    enc.encode_uniform([code], len(ADAPTIVE_CLASSES))
    for (phase, k, sym), (keys, buckets, choice) in zip(passes, plan):
        if phase > 0:
            enc.encode_uniform([k], PRED_CODES)
        _encode_choice(enc, choice % tables.num_tables - buckets // (2 * ADAPTIVE_CLASSES[code]), tables)
        if shapes:  # does the pass use the twins? then each bucket's family
            family = choice // tables.num_tables
            enc.encode_uniform([int(family.any())], 2)
            if family.any():
                enc.encode_uniform(family, 2)
        lut = np.zeros(_num_keys(tables, ADAPTIVE_CLASSES[code]), np.int64)
        lut[buckets] = choice
        enc.encode(sym, lut[keys])
    if stats is not None:
        stats["estimated_bits"] = stats.get("estimated_bits", 0.0) + enc.estimated_bits
    return enc.getvalue()


def decode_residual_adaptive(data: bytes, base: np.ndarray, max_error: int, model: ResidualModel,
                             shapes: bool = False) -> np.ndarray:
    """Inverse of encode_residual_adaptive (with the same `shapes`)."""
    tables = model.tables
    dec = Decoder(shape_tables(tables) if shapes else tables, data)
    code = int(dec.decode_uniform(1, len(ADAPTIVE_CLASSES))[0])
    count = ADAPTIVE_CLASSES[code]
    cls = intensity_classes(base, count)
    geometry = _geometry(tuple(base.shape))
    num_keys = _num_keys(tables, count)

    def visit(phase, idx, f, nb):
        pred = prediction(nb, int(dec.decode_uniform(1, PRED_CODES)[0])) if phase > 0 else 0
        keys = _bucket_keys(idx, zero_context(f, len(idx)).astype(np.int64), cls[geometry[phase][0]], count)
        present = np.zeros(num_keys, bool)
        present[keys] = True
        buckets = np.flatnonzero(present)
        choice = buckets // (2 * count) + _decode_choice(dec, buckets.size, tables)
        if choice.size and (choice.min() < 0 or choice.max() >= tables.num_tables):
            raise ValueError("adaptive residual stream chooses a table outside the model's")
        if shapes and dec.decode_uniform(1, 2)[0]:
            choice = choice + tables.num_tables * dec.decode_uniform(buckets.size, 2)
        lut = np.zeros(num_keys, np.int64)
        lut[buckets] = choice
        return dec.decode(lut[keys]) + pred

    return _walk(base, max_error, model, visit)
