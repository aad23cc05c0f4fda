"""Error-bounded tiles without a wavelet base: a pyramid of interpolations, with tables fitted to the tile.

Graphics, test patterns, screen captures and the flat backgrounds of ultrasound frames are made of
regions of one value with sharp edges between them. A wavelet base rings at those edges and the
learned residual tables expect noise, so the error-bounded coder (edge_runtime.residual) spends bits
where there is nothing to code. This coder codes the tile's integer values u (0..top) directly:

  1. the coarsest lattice, every STRIDE-th row and column: each value as its difference to its left
     neighbour on the lattice (the first column: to the one above; the first value: itself);
  2. then for s = STRIDE/2, ..., 2, 1, two passes: the centres (r, c = s mod 2s), from their 4 diagonal
     neighbours (r ± s, c ± s); then the rest of the lattice of step s (r = 0, c = s and r = s, c = 0
     mod 2s), from their 4 direct neighbours at distance s. Every neighbour is decoded by then. One
     outside the tile is mirrored onto the one opposite (r + s -> r - s); when neither exists (a tile
     thinner than s), the other axis' pair is used twice.

Each value is coded as its difference to a prediction from its 4 neighbours n0 <= n1 <= n2 <= n3
(sorted) and 12 more decoded values farther out: 8 at (±s, ±3s) and (±3s, ±s) for the centres,
(±s, ±2s) and (±2s, ±s) for the rest, and a ring of 4 at (±3s, ±3s), or (0, ±3s) and (±3s, 0);
mirrored likewise, or a near neighbour when outside on both sides. A pass
has one of 7 modes (MODES), sent first (uniform). The prediction is median-like, n1 when three near
values are equal (n0 = n2 or n1 = n3), else (n1 + n2) >> 1; or linear, the sum of integer weights
times terms plus 2**(WEIGHT_SHIFT-1), shifted right by WEIGHT_SHIFT and clipped to 0..top, the terms
being n0..n3, the sum of the 8 far values and that of the ring (kind 1) or n0..n3, the 8 far values
sorted and the ring's 4 sorted (kind 2: an L-estimator, robust at edges); the pass's weights follow the mode (zigzag, Exp-Golomb; the encoder's least-squares
fit). The context is how many distinct values the near neighbours hold (1, 2, 3 or more) and, when
more than one, an activity bucket: min(mag_code(range) >> 2, ACT_BUCKETS - 1), the range of the near values or
(wide modes) of all 16, or in a tile of version 2 one of ACTIVITIES (below); in the pattern mode, positions whose near neighbours hold exactly 2 values take
instead the context of which of the 4 hold the smaller one (an edge's direction). The encoder weighs
the modes on a sample of the pass and keeps the cheapest: median-like, near and pattern suit graphics,
linear and wide suit noisy natural images. The coarsest lattice is one context of its own.

Each value can also be coded as a neighbour rank: the rank of the value among the distinct neighbour
values when it is one of them, else their count plus the zigzag of its difference to the prediction.
On graphics a value is most often one of its neighbours' and its rank says which in a bit or two; on
natural images the plain difference is shorter. Per pass, for every context present (ascending), a
uniform bit says which of the two the context's symbols are (the coarsest lattice: always differences).

Then the stream says (uniform bit) whether the context's symbols use a table sent here or one of
the residual model's tables (then its number, uniform). A sent table is
the number of distinct symbols minus one, the smallest symbol (zigzag) and the gaps between the next
ones minus one, and the counts minus one of all but the last (Exp-Golomb, Encoder.encode_naturals);
its frequencies are 1 + count * (2**PRECISION - m) // n, the rest to the first most frequent, and a
context with a single symbol codes nothing more. Then the context's symbols. The encoder picks, per
context, whichever costs fewer bits. All integer: the same values on every CPU.

Version 2 (ACTIVITY_VERSION; version 1 tiles decode as before): every pass sends, after
its mode, which of ACTIVITIES measures its contexts' activity (uniform): the range as
above, the range in half as many buckets, half the range plus twice the local mean error, or twice the local mean
error alone, bucketed as mag_code(value) >> 3. The local mean error of a position (_Energy.mean) is the floor of
the mean of |value - prediction| over the values coded in earlier passes (not the coarsest lattice) within
ENERGY_RADIUS steps of the pass along each axis (0 where none): integers both sides know, a far steadier measure of
the local noise of a CT or MR than the range of 4 or 16 values. The encoder weighs the measures as it weighs the
modes, and fits a linear mode's weights also by least squares weighted by 1 / (1 + local mean error)^p, keeping
the cheapest (the decoder only reads the weights). A linear pass then sends a uniform bit: split or not. A split
pass sends a threshold (Exp-Golomb) and a second set of weights before its weights: positions whose local mean
error exceeds the threshold are predicted with the second set (the encoder tries the median of the pass's mean
errors, in passes of SPLIT_MIN positions or more). The pattern mode takes the activity measure too, at its
positions whose near values hold other than 2 distinct values.

Version 3 (HALVES_VERSION, which encoders write for tiles that are large enough and not mostly flat, version 2 for
the others: codec.PlaneCoder.HALVES_GATE) is
version 2 with the last edges pass (step 1: half of the tile's values) coded as two passes: first its values on
even rows, then those on odd rows, whose ring of far values may be their 4 diagonal neighbours (in the first half)
instead of (0, ±3) and (±3, 0): a uniform bit before the second half's mode says which (the encoder takes the
diagonals losslessly, and weighs both rings with a max error). In a single pass every value of step 1 that is not
a centre sees only values of the other parity (r + c even); the second half sees 4 values of its own parity at
distance 1, which a linear mode weighs (least squares) and a wide mode's range includes.

With a max error D > 0 every coded difference is quantized with step 2D + 1 as in edge_runtime.residual
(q = sign(e) * floor((|e| + D) / (2D + 1)), value = clip(prediction + (2D + 1) * q, 0, top)), the coarsest
lattice is coded as floor((u + D) / (2D + 1)) (value min(q * (2D + 1), top)), a value within D of a
neighbour's may be coded as that neighbour's rank, and predictions come from the values as decoded: every
value within D of the tile's.
"""
from __future__ import annotations

import functools
import threading

import numpy as np

from edge_runtime import context as ctx
from edge_runtime.entropy import PRECISION, Decoder, Encoder, EntropyTables, group_spans, natural_bits
from edge_runtime.threads import shape_cache

__all__ = ["STRIDE", "decode", "encode"]

STRIDE = 32
MAX_PIXELS = 1 << 22
"""The largest tile the encoder codes without a base (2048x2048), and of version 2 a decoder accepts: a pass holds
its neighbours' positions and values at once, about 100 bytes a pixel for the largest (the tiles of version 1 keep
no such limit: streams from before it stay decodable)."""
ACT_BUCKETS = 32
NUM_CONTEXTS = 1 + 2 * ACT_BUCKETS
"""Contexts of a pass without the pattern ones (which follow); the coarsest lattice has one context, 0."""
MAX_TILE_VALUE = 1 << 31


def _mirror(v: np.ndarray, other: np.ndarray, n: int) -> np.ndarray:
    """Coordinates `v` outside 0..n-1 replaced by `other` (the neighbour on the opposite side), -1 if outside too."""
    v = np.where((v < 0) | (v >= n), other, v)
    return np.where((v < 0) | (v >= n), -1, v)


@shape_cache(maxsize=4)
def _geometry(shape: tuple, halves: bool = False) -> tuple:
    """(lattice positions, passes): per pass, the flat positions, the 4 near neighbours' and the 12 far values'
    flat positions (int32 where they fit: 17 index arrays per position weigh 68 bytes, not 136). With `halves`
    (tiles of HALVES_VERSION) the last edges pass is two: its positions on the lattice's rows, then the others,
    which have 16 far values: the 12 of an edges pass, then their 4 diagonal neighbours (DIAGONAL_RING), all in
    the first half (_ring picks 12).

    Every position of a pass lies on a grid (rows r0, r0 + 2s, ...) x (columns c0, c0 + 2s, ...), the edges
    pass on two of them, and each neighbour's row depends on the position's row only and its column on the
    column only: each index array is the sum of a row term and a column term, formed by broadcasting."""
    rows, cols = shape
    index = np.int32 if rows * cols < 1 << 31 else np.int64
    lattice = _grid_positions(rows, cols, 0, 0, STRIDE).astype(np.int64)
    passes = []
    s = STRIDE // 2
    while s >= 1:
        passes.append(_interleaved(_grid_pass(rows, cols, s, s, s, True, index)))  # the centres
        if halves and s == 1:
            passes += [_interleaved(_grid_pass(rows, cols, 0, s, s, False, index)),
                       _interleaved(_grid_pass(rows, cols, s, 0, s, False, index, RING_EDGES + DIAGONAL_RING))]
        else:
            passes.append(_interleaved(_grid_pass(rows, cols, 0, s, s, False, index),
                                       _grid_pass(rows, cols, s, 0, s, False, index)))
        s //= 2
    return lattice, tuple(passes)


def _grid_positions(rows: int, cols: int, r0: int, c0: int, step: int) -> np.ndarray:
    """Flat positions of the grid (r0, r0 + step, ...) x (c0, c0 + step, ...), row-major."""
    return (np.arange(r0, rows, step)[:, None] * cols + np.arange(c0, cols, step)[None, :]).ravel()


def _grid_pass(rows: int, cols: int, r0: int, c0: int, s: int, diagonal: bool, index, ring: tuple | None = None) -> tuple:
    """(positions, 4 near, 12 far) of the grid (r0 + 2s k) x (c0 + 2s l) of step s, each a 2-D (grid rows, grid
    columns) array: the centres (diagonal) or one half of the edges pass (module docstring); `ring` (edges only)
    in place of RING_EDGES."""
    rr = np.arange(r0, rows, 2 * s, dtype=index)
    cc = np.arange(c0, cols, 2 * s, dtype=index)
    row = lambda a: _mirror(rr + a * s, rr - a * s, rows)  # a neighbour's row, mirrored; -1 outside on both sides
    col = lambda b: _mirror(cc + b * s, cc - b * s, cols)
    at_row = lambda v: (v * index(cols))[:, None]  # the row term of a flat position
    up, down, left, right = at_row(row(-1)), at_row(row(1)), col(-1)[None, :], col(1)[None, :]
    here_r, here_c = at_row(rr), cc[None, :]
    if diagonal:  # r - s and c - s always exist for the centres
        nb = [up + left, up + right, down + left, down + right]
    else:  # a pair that does not exist (a tile thinner than s) is replaced by the other axis' pair
        vertical, horizontal = (row(-1) >= 0)[:, None], (col(-1) >= 0)[None, :]
        nb = [np.where(vertical, up + here_c, here_r + left), np.where(vertical, down + here_c, here_r + right),
              np.where(horizontal, here_r + left, up + here_c), np.where(horizontal, here_r + right, down + here_c)]
    far = []  # 12 more decoded values around: outside the tile on both sides (a thin tile), a near neighbour
    for a, b in (FAR_CENTRES + RING_CENTRES if diagonal else FAR_EDGES + (ring or RING_EDGES)):
        fr, fc = row(a), col(b)
        inside = (fr >= 0)[:, None] & (fc >= 0)[None, :]
        far.append(np.where(inside, at_row(fr) + fc[None, :], nb[len(far) % 4]))
    return (here_r + here_c, nb, far)


def _interleaved(a: tuple, b: tuple | None = None) -> tuple:
    """A pass from its grid `a`, or from its two grids (the edges pass: rows 0, 2s, ... and s, 3s, ...): every
    array flat and contiguous, in row-major order of the positions (ctx.interleave_rows)."""
    b = b or (None, (None,) * 4, (None,) * len(a[2]))
    return (ctx.interleave_rows(a[0], b[0]), tuple(ctx.interleave_rows(x, y) for x, y in zip(a[1], b[1])),
            tuple(ctx.interleave_rows(x, y) for x, y in zip(a[2], b[2])))


FAR_CENTRES = ((-1, -3), (-1, 3), (1, -3), (1, 3), (-3, -1), (-3, 1), (3, -1), (3, 1))
FAR_EDGES = ((-1, -2), (-1, 2), (1, -2), (1, 2), (-2, -1), (-2, 1), (2, -1), (2, 1))
RING_CENTRES = ((-3, -3), (-3, 3), (3, -3), (3, 3))
RING_EDGES = ((0, -3), (0, 3), (-3, 0), (3, 0))
DIAGONAL_RING = ((-1, -1), (-1, 1), (1, -1), (1, 1))
"""The other ring of the second half of a split edges pass (HALVES_VERSION): the 4 diagonal neighbours, in the
first half."""


FAR_VALUES = len(FAR_EDGES) + len(RING_EDGES)
"""The far values a pass predicts from (the second half of a split edges pass has DIAGONAL_RING's 4 more)."""


def _ring(far: tuple, diagonals: bool) -> tuple:
    """The 12 far values of the second half of a split edges pass (16 in its geometry): the 8, then its ring, the
    usual one or the diagonal neighbours."""
    return far[:len(FAR_EDGES)] + far[FAR_VALUES:] if diagonals else far[:FAR_VALUES]


WEIGHT_SHIFT = 10
"""Linear predictions are (sum of weight * term + 2**(WEIGHT_SHIFT-1)) >> WEIGHT_SHIFT (see _features)."""


_NETWORK_4 = ((0, 1), (2, 3), (0, 2), (1, 3), (1, 2))
_NETWORK_8 = ((0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7), (0, 1), (2, 3), (4, 5), (6, 7),
              (2, 4), (3, 5), (1, 4), (3, 6), (1, 2), (3, 4), (5, 6))
"""Sorting networks of 4 and 8 values (optimal: 5 and 19 compare-exchanges; tests check every 0-1 input)."""


def _sort_rows(a: np.ndarray, network: tuple) -> None:
    """Sort the rows of `a` (k x n) in place along axis 0 with a sorting network: the same values as
    a.sort(axis=0), without a strided sort of every column."""
    low = np.empty(a.shape[1], a.dtype)
    for i, j in network:
        np.minimum(a[i], a[j], out=low)
        np.maximum(a[i], a[j], out=a[j])
        a[i] = low


def _take_rows(u_flat: np.ndarray, positions: tuple) -> np.ndarray:
    """The values at each of `positions` (flat index arrays of one length), one row each."""
    out = np.empty((len(positions), positions[0].size), u_flat.dtype)
    for row, at in zip(out, positions):
        np.take(u_flat, at, out=row, mode="clip")  # the geometry's positions are in range; "raise" would buffer
    return out


def _gather(u_flat: np.ndarray, neighbours: tuple, far: tuple, sort_far: bool = True) -> tuple:
    """The 4 near neighbours' values (sorted, 4 x n), the 12 far ones' (12 x n: the 8, then the ring's 4, each group
    sorted when `sort_far`: linear kind 2 needs it; None when `far` is None), and which near neighbours hold the
    smallest value (bit i: the i-th of `neighbours`) of a pass's positions."""
    nb = _take_rows(u_flat, neighbours)
    low = (nb == nb.min(0)).astype(np.int64)
    pattern = low[0] | (low[1] << 1) | (low[2] << 2) | (low[3] << 3)
    _sort_rows(nb, _NETWORK_4)
    if far is None:  # a mode that reads no far value (the decoder's median-like modes with near contexts)
        return nb, None, pattern
    fv = _take_rows(u_flat, far)
    if sort_far:
        _sort_rows(fv[:8], _NETWORK_8)
        _sort_rows(fv[8:], _NETWORK_4)
    return nb, fv, pattern


def _median_like(nb: np.ndarray) -> np.ndarray:
    n0, n1, n2, n3 = nb
    return np.where((n0 == n2) | (n1 == n3), n1, (n1 + n2) >> 1)


def _features(kind: int, nb: np.ndarray, fv: np.ndarray) -> list:
    """The terms of linear prediction `kind` (1: the 4 sorted near values, the sum of the 8 far values, the sum of
    the ring's 4; 2: the 4 sorted near values, the 8 far values sorted, the ring's 4 sorted)."""
    if kind == 1:
        return [nb[0], nb[1], nb[2], nb[3], fv[:8].sum(0), fv[8:].sum(0)]
    return [nb[0], nb[1], nb[2], nb[3]] + [fv[i] for i in range(12)]  # as _gather sorts them


LINEAR_TERMS = (0, 6, 16)
"""How many weights linear prediction kind 1 and 2 have (kind 0: the median-like prediction, none)."""


def _predict(nb: np.ndarray, fv: np.ndarray, weights, top: int, wide: bool, pattern: np.ndarray | None = None,
             kind: int = 0, activity: int = 0, energy: np.ndarray | None = None, split=None) -> tuple:
    """(prediction, context, distinct near values (4, n), how many) from the sorted near values `nb` and the far
    ones `fv`; row k of the distinct values is the k-th smallest (rows past the count repeat the last).
    `weights`: those of linear prediction `kind` (sum of weight * term, rounded at WEIGHT_SHIFT), clipped to
    0..top; None: the median-like one. `wide`: the context's range is that of all 16 values, else of
    the near ones. `pattern` (graphics): positions whose near neighbours hold 2 values take the context of which
    of them hold the smaller one instead of a range. `activity`, `energy`: _context's; `split`: _split_prediction's."""
    values, distinct = _distinct_values(nb)
    pred = _prediction(nb, fv, weights, top, kind) if split is None else _split_prediction(nb, fv, weights, split,
                                                                                           energy, top, kind)
    return pred, _context(nb, fv, distinct, wide, pattern, activity, energy), values, distinct


def _prediction(nb: np.ndarray, fv: np.ndarray, weights, top: int, kind: int) -> np.ndarray:
    """_predict's prediction."""
    if weights is None:
        return _median_like(nb)
    lin = np.full(nb.shape[1], 1 << (WEIGHT_SHIFT - 1), np.int64)
    for w, term in zip(weights, _features(kind, nb, fv)):
        lin += int(w) * term
    return np.clip(lin >> WEIGHT_SHIFT, 0, top)


def _context(nb: np.ndarray, fv: np.ndarray, distinct: np.ndarray, wide: bool,
             pattern: np.ndarray | None, activity: int = 0, energy: np.ndarray | None = None) -> np.ndarray:
    """_predict's context; `activity` (ACTIVITIES) and the local mean error `energy` (_Energy.mean) pick its
    activity measure (0: the range alone)."""
    return _with_patterns(_activity_context(_span(nb, fv, wide), distinct, activity, energy), distinct, pattern)


def _with_patterns(context: np.ndarray, distinct: np.ndarray, pattern: np.ndarray | None) -> np.ndarray:
    """`context` where the near values hold other than 2 distinct values, else (with `pattern`) the pattern's."""
    if pattern is None:
        return context
    return np.where(distinct == 2, NUM_CONTEXTS - 1 + pattern, context)  # 14 patterns, after the other contexts


def _span(nb: np.ndarray, fv: np.ndarray, wide: bool) -> np.ndarray:
    """The range of the near values (sorted), or with `wide` of all 16."""
    return np.maximum(nb[3], fv.max(0)) - np.minimum(nb[0], fv.min(0)) if wide else nb[3] - nb[0]


def _activity_context(span: np.ndarray, distinct: np.ndarray, activity: int, energy: np.ndarray | None) -> np.ndarray:
    """_context without the pattern contexts, from the range `span`."""
    act = np.minimum(ctx.mag_code(_activity_value(activity, span, energy)) >> ACTIVITIES[activity][2],
                     ACT_BUCKETS - 1)
    return np.where(distinct == 1, 0, 1 + (np.minimum(distinct, 3) - 2) * ACT_BUCKETS + act)


ACTIVITIES = ((2, 0, 2), (2, 0, 3), (1, 2, 3), (0, 2, 3))
"""The activity measures of a pass's contexts (tiles of ACTIVITY_VERSION): (r, e, shift) for the bucket
mag_code((r * range >> 1) + e * energy) >> shift, range that of the mode's near or wide values and energy the
local mean error (_Energy.mean): the range alone (version 1's), the same in half as many buckets, half the range
plus twice the mean error, twice the mean error alone. Noise-dominated images (CT, MR) know their local noise
level better from the errors of the passes already coded around a value than from 4 or 16 values."""
ACTIVITY_VERSION = 2
"""Version of a tile whose passes send their activity measure (ACTIVITIES) and split weights; version 1: neither."""
HALVES_VERSION = 3
"""Version of a tile whose last edges pass (step 1, half the tile's values) is coded in two halves: first the values
on the lattice's rows (even rows, odd columns), then the others, whose ring of far values may then be their 4
diagonal neighbours (DIAGONAL_RING), decoded in the first half, instead of (0, ±3), (±3, 0): a uniform bit before
the pass's mode says which. Noise-dominated images (CT, MR) are 0.5-4 % smaller; small tiles and graphics lose a
little (another pass's side information)."""
VERSIONS = (1, ACTIVITY_VERSION, HALVES_VERSION)
ENERGY_RADIUS = 3
"""The local mean error averages the errors of the coded values within this many steps (of the pass) each way."""


def _activity_value(activity: int, span: np.ndarray, energy: np.ndarray | None) -> np.ndarray:
    """The value ACTIVITIES[activity] measures from the range `span` and the local mean error `energy`."""
    r, e, _shift = ACTIVITIES[activity]
    value = span if r == 2 else (span * r) >> 1
    return value + e * energy if e else value


class _Energy:
    """Each coded value's error |value - prediction| (the coarsest lattice has none), and their local means:
    both sides know the errors of the passes already coded, so a pass may weigh its contexts by them."""

    def __init__(self, rows: int, cols: int, top: int, halves: bool = False):
        self.rows, self.cols = rows, cols
        self.error = np.zeros(rows * cols, np.int32 if top < 1 << 31 else np.int64)  # an error is at most top
        self.counts = _window_counts((rows, cols), halves)

    def add(self, at: np.ndarray, values: np.ndarray, pred: np.ndarray) -> None:
        self.error[at] = np.abs(values - pred)

    def mean(self, i: int, at: np.ndarray) -> np.ndarray:
        """The mean error (floor) of the values coded before pass i of _geometry (positions `at`) within
        ENERGY_RADIUS steps (of the pass) of each of its positions; 0 where none."""
        return _window_sums(self.error, (self.rows, self.cols), at, _pass_step(i)) // self.counts[i]


def _window_sums(v: np.ndarray, shape: tuple, at: np.ndarray, s: int) -> np.ndarray:
    """At each of positions `at` (flat, on the grid of step s: every value coded before a pass of step s lies on
    it, as the pass's positions do), the sum of the flat plane `v` over the grid within ENERGY_RADIUS steps."""
    rows, cols = shape
    grid = v.reshape(rows, cols)[::s, ::s]
    return np.take(_box_sums(grid), (at // cols) // s * grid.shape[1] + (at % cols) // s)


@shape_cache(maxsize=4)
def _window_counts(shape: tuple, halves: bool = False) -> tuple:
    """Per pass of _geometry(shape, halves): how many values coded before it (not the coarsest lattice) lie within
    ENERGY_RADIUS steps of each of its positions, at least 1."""
    rows, cols = shape
    _lattice, passes = _geometry(shape, halves)
    known = np.zeros(rows * cols, np.uint8)
    out = []
    for i, (at, _nb, _far) in enumerate(passes):
        n = _window_sums(known, shape, at, _pass_step(i))
        out.append(np.maximum(n, 1).astype(np.uint8))  # at most (2 r + 1)^2
        known[at] = 1
    return tuple(out)


def _box_sums(v: np.ndarray) -> np.ndarray:
    """Flat sums of integer 2-D `v` over the (2 ENERGY_RADIUS + 1)^2 window around each element (zero outside)."""
    r = ENERGY_RADIUS
    c = np.zeros((v.shape[0] + 2 * r + 1, v.shape[1] + 2 * r + 1), np.int64)
    c[r + 1:r + 1 + v.shape[0], r + 1:r + 1 + v.shape[1]] = v
    np.cumsum(c, axis=0, out=c)
    np.cumsum(c, axis=1, out=c)
    w = 2 * r + 1
    out = c[w:, w:] - c[:-w, w:]  # one temporary of the plane's size: the CR's passes peak here otherwise
    out -= c[w:, :-w]
    out += c[:-w, :-w]
    return out.ravel()


def _distinct_values(nb: np.ndarray) -> tuple:
    """_predict's distinct near values and their count: with n0 <= n1 <= n2 <= n3, the second distinct value is
    the first n_i that differs from its predecessor, the third is n2 when n0 < n1 < n2, and past the count the
    last (n3) repeats."""
    n0, n1, n2, n3 = nb
    new1, new2, new3 = n1 != n0, n2 != n1, n3 != n2
    distinct = 1 + new1.astype(np.int64) + new2 + new3
    values = np.stack([n0, np.where(new1, n1, np.where(new2, n2, n3)), np.where(new1 & new2, n2, n3), n3])
    return values, distinct


MAX_WEIGHT = 1 << 16


def _fit_weights(y: np.ndarray, nb: np.ndarray, fv: np.ndarray, kind: int):
    """Least-squares weights of linear prediction `kind` of values y (rounded, WEIGHT_SHIFT), or None."""
    return _fit_all(y, nb, fv)[kind]


_KIND1_OF_KIND2 = np.zeros((LINEAR_TERMS[1], LINEAR_TERMS[2]))
_KIND1_OF_KIND2[[0, 1, 2, 3], [0, 1, 2, 3]] = 1.0
_KIND1_OF_KIND2[4, 4:12] = 1.0
_KIND1_OF_KIND2[5, 12:16] = 1.0
"""Kind 1's terms as sums of kind 2's (the far values' sums do not depend on their order)."""


_FIT_CHUNK = 1 << 16
"""Positions per block of the least-squares sums (8 MB of float64 terms)."""


def _fit_all(y: np.ndarray, nb: np.ndarray, fv: np.ndarray) -> list:
    """[None, weights of kind 1, weights of kind 2] (see _fit_weights; None where the fit fails): least squares
    from the normal equations of kind 2's terms, kind 1's derived from them (the encoder's choice: the weights are
    sent). The terms are integers, so their products and sums are exact in float64 up to 2**53."""
    return _fits(y, nb, fv, (None,))[0]


def _fits(y: np.ndarray, nb: np.ndarray, fv: np.ndarray, weightings: tuple) -> list:
    """_fit_all's list for each of `weightings`: None (plain least squares) or an array of a weight per value
    (weighted least squares), the terms gathered once for all."""
    terms = LINEAR_TERMS[2]
    grams = [(np.zeros((terms, terms)), np.zeros(terms)) for _ in weightings]
    X = np.empty((terms, min(y.size, _FIT_CHUNK)))
    for a in range(0, y.size, _FIT_CHUNK):  # in chunks: bounded memory
        b = min(y.size, a + _FIT_CHUNK)
        x = X[:, :b - a]
        x[:4] = nb[:, a:b]
        x[4:] = fv[:, a:b]
        yb = y[a:b].astype(np.float64)
        for (gram2, xy2), w in zip(grams, weightings):
            xw = x if w is None else x * w[a:b]
            gram2 += xw @ x.T
            xy2 += xw @ yb
    t = _KIND1_OF_KIND2
    return [[None, _solve(t @ gram2 @ t.T, t @ xy2), _solve(gram2, xy2)] for gram2, xy2 in grams]


def _solve(gram: np.ndarray, xy: np.ndarray):
    """Rounded weights (WEIGHT_SHIFT, clipped to MAX_WEIGHT) solving the normal equations `gram` w = `xy`, with
    a ridge of 1e-9 of the trace; None when singular."""
    gram = gram.copy()
    gram[np.diag_indices_from(gram)] += 1e-9 * max(float(np.trace(gram)), 1.0)
    try:
        w = np.linalg.solve(gram, xy)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(w)):
        return None
    return tuple(int(v) for v in np.clip(np.round(w * (1 << WEIGHT_SHIFT)), 1 - MAX_WEIGHT, MAX_WEIGHT - 1))


MODES = ((0, False, False), (0, True, False), (1, False, False), (1, True, False), (2, False, False),
         (2, True, False), (0, False, True))
"""A pass's prediction mode: (linear prediction kind, 0 = median-like; wide context range; pattern contexts);
the encoder picks the cheapest."""
_CHOICE_SAMPLE = 3
"""The encoder fits the weights and weighs the modes on every _CHOICE_SAMPLE-th position of a pass."""
FIT_WEIGHTINGS = (1, 2)
"""Powers p of the weights 1 / (1 + energy)^p of the encoder's weighted least-squares fits (_choose_mode)."""
ACT_SAMPLE_MIN = 1 << 15
"""The activity measures are weighed on every position of passes up to this size, on the sample above it."""


def _predict_mode(mode: int, weights, nb: np.ndarray, fv: np.ndarray, pattern: np.ndarray, top: int,
                  activity: int = 0, energy: np.ndarray | None = None, split=None) -> tuple:
    """_predict as pass mode `mode` (MODES), `activity` and `split` define it."""
    kind, wide, patterned = MODES[mode]
    return _predict(nb, fv, weights, top, wide, pattern if patterned else None, kind, activity, energy, split)


def _choose_activity(sym: np.ndarray, ranked: np.ndarray, distinct: np.ndarray, span: np.ndarray,
                     pattern: np.ndarray | None, energy: np.ndarray) -> int:
    """The activity measure (ACTIVITIES) coding a pass's symbols (_ranked's plain and neighbour-rank ones) in the
    fewest bits (estimated as _choose_mode estimates the modes', on every _CHOICE_SAMPLE-th position of passes
    over ACT_SAMPLE_MIN positions); `span`: the mode's range (_span), `pattern`: the pattern mode's (its other
    positions take the measure)."""
    sub = slice(None, None, _CHOICE_SAMPLE) if sym.size > ACT_SAMPLE_MIN else slice(None)
    sym, ranked, distinct, span, energy = sym[sub], ranked[sub], distinct[sub], span[sub], energy[sub]
    pattern = pattern[sub] if pattern is not None else None
    costs = [_pass_bits(sym, ranked, _with_patterns(_activity_context(span, distinct, a, energy), distinct, pattern))
             for a in range(len(ACTIVITIES))]
    return int(np.argmin(costs))


def _diagonals_cheaper(y, u_flat, neighbours, far, step: int, top: int, energy) -> bool:
    """Whether the second half of a split edges pass costs fewer bits (as _choose_mode weighs them) with its diagonal
    neighbours as its ring than with the usual one. With a max error, the diagonals carry its quantization error:
    on some CT they then cost bits (the encoder only weighs the two rings then; losslessly the diagonals)."""
    costs = [_weigh_mode(y, *_gather(u_flat, neighbours, _ring(far, d)), step, top, energy)[0] for d in (True, False)]
    return costs[0] <= costs[1]


def _choose_mode(y, nb, fv, pattern, step: int, top: int, energy: np.ndarray | None = None) -> tuple:
    """(mode, weights, split) of the pass coding values y in the fewest bits, weighed on a sample of its positions
    (_weigh_mode)."""
    return _weigh_mode(y, nb, fv, pattern, step, top, energy)[1:]


def _weigh_mode(y, nb, fv, pattern, step: int, top: int, energy: np.ndarray | None = None) -> tuple:
    """(estimated bits, mode, weights, split) of the pass coding values y in the fewest bits, weighed on a sample of
    its positions.
    With the local mean errors `energy` (_Energy.mean), a linear mode's weights are also fitted (on the sample) by
    least squares weighted by 1 / (1 + energy)^p (FIT_WEIGHTINGS), and the cheapest weights kept: values amid noise,
    whose errors are large whatever the weights, then pull the fit less than those where a good prediction saves
    bits. In passes of SPLIT_MIN positions or more, two sets fitted so on the positions whose mean error is at most
    the pass's median and on the others are weighed too: split = (that median, the others' weights), else None."""
    sub = slice(None, None, _CHOICE_SAMPLE) if y.size > 64 * _CHOICE_SAMPLE else slice(None)
    y, nb, fv, pattern = y[sub], nb[:, sub], fv[:, sub], pattern[sub]
    fitted = _fit_all(y, nb, fv)
    values, distinct = _distinct_values(nb)
    hits = _hits(y, values, step)
    symbols, contexts = {}, {}  # per prediction kind, per context kind: what the modes share
    best = None
    for mode, (kind, wide, patterned) in enumerate(MODES):
        w = fitted[kind]
        if kind and w is None:
            continue
        if kind not in symbols:
            symbols[kind] = _ranked(y, _prediction(nb, fv, w, top, kind), values, distinct, step, top, hits)[:2]
        if (wide, patterned) not in contexts:
            contexts[wide, patterned] = _context(nb, fv, distinct, wide, pattern if patterned else None)
        cost = _pass_bits(*symbols[kind], contexts[wide, patterned])
        if best is None or cost < best[0]:
            best = (cost, mode, w)
    kind, wide, patterned = MODES[best[1]]
    if energy is None or not kind:
        return best[0], best[1], best[2], None
    e = energy[sub]
    weighted = _fits(y, nb, fv, tuple(1.0 / (1.0 + e) ** p for p in FIT_WEIGHTINGS))
    for w in {f[kind] for f in weighted if f[kind] is not None} - {best[2]}:
        sym = _ranked(y, _prediction(nb, fv, w, top, kind), values, distinct, step, top, hits)[:2]
        cost = _pass_bits(*sym, contexts[wide, patterned])
        if cost < best[0]:
            best = (cost, best[1], w)
    split = None
    if energy.size >= SPLIT_MIN:  # two sets of weights, for the quieter and the noisier half of the pass
        threshold = int(np.partition(energy, energy.size // 2)[energy.size // 2])
        high = e > threshold
        if min(int(high.sum()), int((~high).sum())) >= 64:
            fits = [_fits(y[part], nb[:, part], fv[:, part], (1.0 / (1.0 + e[part]),))[0][kind]
                    for part in (~high, high)]
            if None not in fits:
                trial = (threshold, fits[1])
                pred = _split_prediction(nb, fv, fits[0], trial, e, top, kind)
                cost = (_pass_bits(*_ranked(y, pred, values, distinct, step, top, hits)[:2], contexts[wide, patterned])
                        + _weight_bits(fits[1]) + float(natural_bits(np.array([threshold])).sum()))
                if cost < best[0]:
                    best, split = (cost, best[1], fits[0]), trial
    return best[0], best[1], best[2], split


SPLIT_MIN = 1 << 15
"""The encoder weighs two sets of weights (ACTIVITY_VERSION's split) for linear passes of at least this size."""


def _weight_bits(weights) -> float:
    """Bits of a linear pass's weights as sent (zigzag, Exp-Golomb)."""
    return float(natural_bits(_zigzag(np.asarray(weights))).sum())


def _split_prediction(nb: np.ndarray, fv: np.ndarray, weights, split, energy: np.ndarray, top: int,
                      kind: int) -> np.ndarray:
    """Linear prediction `kind` with `weights`, and in a split pass (split = (threshold, weights)) with the second
    weights where the local mean error `energy` exceeds the threshold."""
    pred = _prediction(nb, fv, weights, top, kind)
    if split is not None:
        high = np.flatnonzero(energy > split[0])
        if high.size:
            pred[high] = _prediction(nb[:, high], fv[:, high], split[1], top, kind)
    return pred


def _pass_bits(sym: np.ndarray, ranked: np.ndarray, context: np.ndarray) -> float:
    """About what _encode_pass spends on a pass (the encoder's estimate for choosing a mode): per context, the
    cheaper of the two symbol kinds, each at its empirical entropy plus a table's cost."""
    return float(np.minimum(_context_bits(sym, context), _context_bits(ranked, context)).sum())


def _context_bits(v: np.ndarray, context: np.ndarray) -> np.ndarray:
    """Per context (0..max): n log2 n - sum c log2 c over its symbols' counts c, plus 8 bits per distinct symbol
    (a sent table) or 3 % and 7 bits (one of the model's tables), whichever is less."""
    lo, span = int(v.min()), int(v.max()) - int(v.min()) + 1
    contexts = int(context.max()) + 1
    at, counts = _key_counts(context * span + (v - lo), contexts * span)
    counts = counts.astype(np.float64)
    run_ctx = at // span
    n = np.bincount(run_ctx, weights=counts, minlength=contexts)
    clogc = np.bincount(run_ctx, weights=counts * np.log2(counts), minlength=contexts)
    distinct = np.bincount(run_ctx, minlength=contexts)
    h = n * np.log2(np.maximum(n, 1)) - clogc
    return h + np.minimum(8.0 * distinct, 0.03 * h + 7.0)  # a sent table, or one of the model's (a few % off)


def _zigzag(v) -> np.ndarray:
    """Signed integers -> 0, -1, 1, -2, ... as 0, 1, 2, 3, ... (arrays or scalars, int64)."""
    v = np.asarray(v, np.int64)
    return (v << 1) ^ (v >> 63)


def _unzigzag(z) -> np.ndarray:
    z = np.asarray(z, np.int64)
    return (z >> 1) ^ -(z & 1)


def _hits(y: np.ndarray, values: np.ndarray, step: int) -> tuple:
    """(whether, which) distinct neighbour value (the first) each of values y is within D = step // 2 of."""
    hit = np.abs(values - y) <= step // 2
    return hit.any(0), np.argmax(hit, axis=0)


def _ranked(y: np.ndarray, pred: np.ndarray, values: np.ndarray, distinct: np.ndarray, step: int,
            top: int, hits: tuple | None = None) -> tuple:
    """(plain symbols, neighbour-rank symbols, the values each reconstructs) of values y, quantized with `step`
    = 2D + 1: a value within D of a distinct neighbour value is that neighbour's rank (the first such), else
    the count plus the zigzag of the plain symbol (the quantized difference to the prediction). `hits`: _hits of
    y (which do not depend on the prediction), or None to compute them."""
    found, k = _hits(y, values, step) if hits is None else hits
    if step == 1:  # lossless: every value reconstructs itself
        q = y - pred
        return q, np.where(found, k, distinct + _zigzag(q)), y, y
    e = y - pred
    d = step // 2
    q = np.sign(e) * ((np.abs(e) + d) // step)
    plain = np.clip(pred + step * q, 0, top)
    ranked = np.where(found, k, distinct + _zigzag(q))
    return q, ranked, plain, np.where(found, values[k, np.arange(y.size)], plain)


def _unranked(r: np.ndarray, pred: np.ndarray, values: np.ndarray, distinct: np.ndarray, step: int,
              top: int) -> np.ndarray:
    z = r - distinct
    return np.where(z < 0, values[np.minimum(r, 3), np.arange(r.size)],
                    _dequantized(pred, _unzigzag(z), step, top))


def _dequantized(pred: np.ndarray, q: np.ndarray, step: int, top: int) -> np.ndarray:
    v = pred + step * q
    return np.clip(v, 0, top) if step > 1 else v  # lossless: out of range is a corrupt stream (checked)


def _lattice_symbols(lat: np.ndarray) -> np.ndarray:
    d = np.empty_like(lat)
    d[:, 1:] = lat[:, 1:] - lat[:, :-1]
    d[1:, 0] = lat[1:, 0] - lat[:-1, 0]
    d[0, 0] = lat[0, 0]
    return d


def _lattice_values(d: np.ndarray) -> np.ndarray:
    lat = d.copy()
    lat[:, 0] = np.cumsum(d[:, 0])
    return np.cumsum(lat, axis=1)


def _frequencies(counts: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """Integer frequencies of sent tables from their symbols' counts (module docstring): of one table, or of one
    per segment of `counts` starting at the positions `first`."""
    first = np.zeros(1, np.int64) if first is None else first
    m = np.diff(np.append(first, counts.size))  # symbols per table
    seg = np.repeat(np.arange(first.size), m)
    f = 1 + counts * ((1 << PRECISION) - m[seg]) // np.add.reduceat(counts, first)[seg]
    peak = np.where(counts == np.maximum.reduceat(counts, first)[seg], np.arange(counts.size), counts.size)
    f[np.minimum.reduceat(peak, first)] += (1 << PRECISION) - np.add.reduceat(f, first)  # to the first most frequent
    return f


@functools.lru_cache(maxsize=4)
def _table_spreads(tables: EntropyTables) -> np.ndarray:
    """Each model table's mean |symbol| (escapes counted at the tail), ascending with the table number."""
    return np.array([float((np.abs(np.arange(len(f)) - t) * f).sum()) / float(f.sum())
                     for f, t in zip(tables.freqs, tables.tails.tolist())])


_TABLE_SEARCH = (2, 3)
"""The encoder weighs the model tables within this many of the one whose mean |symbol| is nearest: losslessly (its
time target: about 4 ms of a 512x512 CT's encode a step), and with a max error (a 1760x1760 CR coded with max error 2
was 1.5 % larger with 2 than with 3)."""


def _key_counts(keys: np.ndarray, size: int) -> tuple:
    """(the distinct keys, ascending; how often each occurs) of integer keys in 0..size-1: by counting when
    `size` is not much more than the number of keys, else by sorting."""
    if size <= max(4 * keys.size, 1 << 16):
        hist = np.bincount(keys, minlength=size)
        at = np.flatnonzero(hist)
        return at, hist[at]
    keys = np.sort(keys)
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return keys[starts], np.diff(np.append(starts, keys.size))


def _runs(s: np.ndarray, lengths: np.ndarray) -> tuple:
    """(segment, value, count) of every distinct value of every segment of `s` (consecutive, `lengths` long),
    by segment then value."""
    seg = np.repeat(np.arange(lengths.size), lengths)
    lo = int(s.min())
    span = int(s.max()) - lo + 1
    at, counts = _key_counts(seg * span + (s - lo), lengths.size * span)
    return at // span, at % span + lo, counts


def _plans(s: np.ndarray, lengths: np.ndarray, tables: EntropyTables, search: int = _TABLE_SEARCH[0]) -> list:
    """Per segment of `s` (a context's symbols, consecutive, `lengths` long), the cheaper way to code it:
    (bits, the sent table's (values, counts, frequencies) or None, the residual model's best table). A sent table costs
    its description (module docstring) and the symbols under its frequencies; a model table its number and the
    symbols under it, searched within `search` (_TABLE_SEARCH) of the one whose mean |symbol| is nearest the
    segment's."""
    seg, val, cnt = _runs(s, lengths)
    first = np.searchsorted(seg, np.arange(lengths.size))
    m = np.diff(np.append(first, seg.size))  # distinct symbols per segment
    # the residual model's tables
    spread = np.add.reduceat(np.abs(val) * cnt, first) / lengths.astype(np.float64)
    spreads = _table_spreads(tables)
    k0 = np.argmin(np.abs(spreads[None, :] - spread[:, None]), axis=1)
    model = np.full(lengths.size, np.inf)
    table = np.zeros(lengths.size, np.int64)
    for j in range(-search, search + 1):
        k = k0 + j
        ok = (k >= 0) & (k < tables.num_tables)
        kr = np.clip(k, 0, tables.num_tables - 1)
        bits = np.add.reduceat(tables.symbol_bits(val, kr[seg]) * cnt, first)
        better = ok & (bits < model)
        model = np.where(better, bits, model)
        table = np.where(better, kr, table)
    model += 1 + np.log2(tables.num_tables)
    # a table sent for the segment: its description, then the symbols under its frequencies
    gaps = np.diff(val) - 1
    gaps[first[1:] - 1] = 0  # across segments (possibly negative): not sent
    gap_bits = natural_bits(gaps)
    gap_bits[first[1:] - 1] = 0
    desc = natural_bits(m - 1) + natural_bits(_zigzag(val[first])) + np.add.reduceat(np.append(gap_bits, 0), first)
    last = np.append(first[1:], seg.size) - 1
    counts_bits = natural_bits(cnt - 1)
    counts_bits[last] = 0  # the last count is implied
    desc = desc + np.add.reduceat(counts_bits, first)
    freq = _frequencies(cnt, first)
    sent = 1 + desc + np.add.reduceat(-(cnt * np.log2(freq / float(1 << PRECISION))), first)
    sent = np.where(m == 1, 1 + desc, sent)
    out = []
    for i in range(lengths.size):
        if sent[i] <= model[i]:
            a, b = first[i], first[i] + m[i]
            out.append((float(sent[i]), (val[a:b], cnt[a:b], freq[a:b]), int(table[i])))
        else:
            out.append((float(model[i]), None, int(table[i])))
    return out


def _encode_pass(enc: Encoder, sym: np.ndarray, context: np.ndarray, ranked: np.ndarray | None = None,
                 search: int = _TABLE_SEARCH[0]):
    """A pass's symbols, context by context; with `ranked` (the neighbour-rank symbols of the same positions), one
    uniform bit per context first says which of the two the context codes (the shorter), and the positions
    coded as ranks are returned (a mask)."""
    tables = enc.tables
    order, spans = group_spans(context)
    lengths = np.array([b - a for _k, a, b in spans], np.int64)
    s = np.take(sym, order)
    plans = _plans(s, lengths, tables, search)
    if ranked is not None:
        r = np.take(ranked, order)
        alternatives = _plans(r, lengths, tables, search)
    as_rank = np.zeros(sym.size, bool)
    for i, (_k, a, b) in enumerate(spans):
        v, plan = s[a:b], plans[i]
        if ranked is not None:
            use = alternatives[i][0] < plan[0]
            enc.encode_uniform([int(use)], 2)
            if use:
                v, plan = r[a:b], alternatives[i]
                as_rank[order[a:b]] = True
        _bits, sent, table = plan
        if sent is not None:
            values, counts, freqs = sent
            enc.encode_uniform([1], 2)
            enc.encode_naturals([len(values) - 1, _zigzag(int(values[0]))])
            enc.encode_naturals(np.diff(values) - 1)
            if len(values) > 1:
                enc.encode_naturals(counts[:-1] - 1)
                enc.encode_categorical(np.searchsorted(values, v), freqs)
        else:
            enc.encode_uniform([0], 2)
            enc.encode_uniform([table], tables.num_tables)
            enc.encode_table(v, table)
    return as_rank


def _decode_symbols(dec: Decoder, n: int) -> np.ndarray:
    """One context's n symbols (its table first), as _encode_pass wrote them."""
    tables = dec.tables
    if dec.decode_uniform(1, 2)[0]:
        m1, z = (int(t) for t in dec.decode_naturals(2))
        if m1 >= n:
            raise ValueError(f"direct tile: a sent table of {m1 + 1} symbols for {n} positions")
        first = int(_unzigzag(z))
        values = first + np.concatenate([[0], np.cumsum(dec.decode_naturals(m1) + 1)])
        if np.abs(values).max() >= MAX_TILE_VALUE:
            raise ValueError("direct tile: a sent table's symbols are out of range")
        if m1 == 0:
            return np.full(n, first, np.int64)
        counts = dec.decode_naturals(m1) + 1
        last = n - int(counts.sum())
        if last < 1:
            raise ValueError("direct tile: a sent table's counts exceed its positions")
        return values[dec.decode_categorical(_frequencies(np.append(counts, last)), n)]
    table = int(dec.decode_uniform(1, tables.num_tables)[0])
    return dec.decode_table(table, n)


def _decode_pass(dec: Decoder, context: np.ndarray, predicted: tuple | None = None) -> np.ndarray:
    """Inverse of _encode_pass: the symbols, or with `predicted` (prediction, distinct values, their count, as
    _predict gives them, step, top) the pass's values. The symbols are decoded context by context, then the values
    rebuilt for the whole pass at once."""
    order, spans = group_spans(context)
    sym = np.empty(context.size, np.int64)  # in coding order
    ranks = []  # the runs coded as neighbour ranks
    for _k, a, b in spans:
        if predicted is not None and dec.decode_uniform(1, 2)[0]:
            ranks.append((a, b))
        sym[a:b] = _decode_symbols(dec, b - a)
    out = np.empty(context.size, np.int64)
    if predicted is None:
        out[order] = sym
        return out
    pred, values, distinct, step, top = predicted
    p = np.take(pred, order)
    v = _dequantized(p, sym, step, top)
    if ranks:
        at = np.concatenate([np.arange(a, b) for a, b in ranks])
        r = sym[at]
        if r.min() < 0:
            raise ValueError("direct tile: a negative neighbour-rank symbol")
        where = order[at]
        v[at] = _unranked(r, p[at], values[:, where], distinct[where], step, top)
    out[order] = v
    return out


def _pass_step(i: int) -> int:
    """The step s of the i-th pass of _geometry (two passes per step: STRIDE/2, ..., 2, 1; with halves, a third of
    step 1)."""
    return max(1, STRIDE >> (1 + i // 2))


def lossless_choices(u: np.ndarray, top: int, version: int = HALVES_VERSION):
    """(mode, weights, split) of every non-empty pass of `encode(u, ..., max_error=0, top, version)`, in order, as
    its encoder chooses them (_choose_mode). Losslessly the values a pass is predicted from are the tile's own, so
    these choices need nothing of the coding: a second process can make them while the encoder codes (choices)."""
    u = np.asarray(u, np.int64)
    flat = u.ravel()
    _lattice, passes = _geometry(tuple(u.shape), version >= HALVES_VERSION)
    errors = _Energy(*u.shape, top, version >= HALVES_VERSION) if version >= ACTIVITY_VERSION else None
    for i, (at, neighbours, far) in enumerate(passes):
        if at.size:
            energy = errors.mean(i, at) if errors is not None else None
            y = np.take(flat, at)
            if len(far) > FAR_VALUES:
                far = _ring(far, True)  # losslessly the diagonals (encode)
            nb, fv, pattern = _gather(flat, neighbours, far)
            mode, weights, split = _choose_mode(y, nb, fv, pattern, 1, top, energy)
            yield mode, weights, split
            if errors is not None:
                errors.add(at, y, _split_prediction(nb, fv, weights, split, energy, top, MODES[mode][0]))


def encode(u: np.ndarray, tables: EntropyTables, max_error: int = 0, top: int | None = None,
           version: int = HALVES_VERSION, choices=None, checks: list | None = None) -> bytes:
    """Range-coded words of integer tile u (values in 0..top), every value within `max_error` of u once decoded;
    `tables`: the residual model's. `version` 1 (the tiles written before ACTIVITY_VERSION) codes every context's
    activity as its range (ACTIVITIES[0]) and splits no pass; version 2 (ACTIVITY_VERSION) codes the last edges
    pass whole (HALVES_VERSION: in two halves). `choices` (lossless only): an iterator of lossless_choices(u, top,
    version), made elsewhere (edge_runtime.overlap), to take each pass's mode from instead of choosing it: the
    same stream. `checks` (lossless tiles of at most CHECK_PIXELS): a list the encoder appends the stream's
    LosslessCheck to (what it takes to check the stream without computing its contexts again)."""
    u = np.asarray(u, np.int64)
    top = int(u.max(initial=0)) if top is None else int(top)
    step = 2 * int(max_error) + 1
    lattice, passes = _geometry(tuple(u.shape), version >= HALVES_VERSION)
    enc = Encoder(tables)
    lat_shape = (-(-u.shape[0] // STRIDE), -(-u.shape[1] // STRIDE))
    q = (u.ravel()[lattice] + step // 2) // step  # the lattice, quantized; its differences coded exactly
    search = _TABLE_SEARCH[step > 1]
    _encode_pass(enc, _lattice_symbols(q.reshape(lat_shape)).ravel(), np.zeros(q.size, np.int64), search=search)
    flat = u.ravel()
    rec = flat.copy() if step > 1 else flat  # what the decoder rebuilds: the predictions' source
    if step > 1:
        rec[lattice] = np.minimum(q * step, top)
    kept = [] if checks is not None and step == 1 and u.size <= CHECK_PIXELS else None
    if kept is not None:  # the predictions' source as the decoder holds it: the values decoded so far, 0 elsewhere
        rec = np.zeros_like(flat)
        rec[lattice] = flat[lattice]
    errors = _Energy(*u.shape, top, version >= HALVES_VERSION) if version >= ACTIVITY_VERSION else None
    for i, (at, neighbours, far) in enumerate(passes):
        if at.size:
            energy = errors.mean(i, at) if errors is not None else None  # before the gathers: a lower peak
            y = np.take(flat, at)
            diagonals = None
            if len(far) > FAR_VALUES:  # the second half of a split edges pass: its ring
                diagonals = step == 1 or _diagonals_cheaper(y, rec, neighbours, far, step, top, energy)
                far = _ring(far, diagonals)
                enc.encode_uniform([int(diagonals)], 2)
            nb, fv, pattern = _gather(rec, neighbours, far)
            if choices is not None and step == 1:
                mode, weights, split = next(choices)
            else:
                mode, weights, split = _choose_mode(y, nb, fv, pattern, step, top, energy)
            kind, wide, patterned = MODES[mode]
            enc.encode_uniform([mode], len(MODES))
            values, distinct = _distinct_values(nb)  # _predict's, with the context built once its measure is known
            pred = _split_prediction(nb, fv, weights, split, energy, top, kind)
            sym, ranked, plain, ranked_value = _ranked(y, pred, values, distinct, step, top)
            patterns, span = pattern if patterned else None, _span(nb, fv, wide)
            activity = 0
            if errors is not None:
                activity = _choose_activity(sym, ranked, distinct, span, patterns, energy)
                enc.encode_uniform([activity], len(ACTIVITIES))
            context = _with_patterns(_activity_context(span, distinct, activity, energy), distinct, patterns)
            if errors is not None and kind:
                enc.encode_uniform([int(split is not None)], 2)
                if split is not None:
                    enc.encode_naturals([split[0]])
                    enc.encode_naturals(_zigzag(split[1]))
            if weights is not None:
                enc.encode_naturals(_zigzag(weights))
            as_rank = _encode_pass(enc, sym, context, ranked, search)
            if step > 1:
                rec[at] = np.where(as_rank, ranked_value, plain)
            if kept is not None:
                rec[at] = y
                side = (diagonals, mode, weights, activity, split if errors is not None and kind else None)
                kept.append((side,) + _compact(pred, context, values, distinct, top))
            if errors is not None:
                errors.add(at, np.take(rec, at), pred)
    data = enc.getvalue()
    if kept is not None:
        checks.append(LosslessCheck(data, u, top, tables, version, kept))
    return data


CHECK_PIXELS = 1 << 20
"""The largest lossless tile whose encode keeps what LosslessCheck needs (about 26 bytes a pixel until it runs)."""


def _compact(pred, context, values, distinct, top: int) -> tuple:
    """A pass's predictions, contexts, distinct near values and their count, in narrower integers (the same values)."""
    wide = np.int32 if top < 1 << 31 else np.int64
    return pred.astype(wide), context.astype(np.int16), values.astype(wide), distinct.astype(np.int16)


class LosslessCheck:
    """Checks that a lossless tile's stream decodes to the tile, for about a third of the cost of decoding it.

    It decodes the stream as `decode` does, with one difference: each pass's predictions and contexts are the
    encoder's, which it computed as the decoder computes them (the same functions: _gather, _distinct_values,
    _split_prediction, _span, _activity_context, _with_patterns) from the values decoded before the pass (the
    tile's values there, 0 elsewhere) and the local mean errors of those. So, pass after pass: if every pass before
    decoded to the tile's values, the decoder holds what the encoder held, computes the same predictions and
    contexts, and reads the same side information and symbols; the check reads them with the same decoder calls and
    checks that the side information is what the encoder wrote and that the values are the tile's. Then `decode` of
    this stream (with these tables) is the tile.

    An encoder `register`s the check of the stream it keeps; the next `decode` of that stream with those tables runs
    it instead of decoding (`checked`), once, and decodes in full if it fails."""

    def __init__(self, data: bytes, u: np.ndarray, top: int, tables: EntropyTables, version: int, kept: list):
        self.data, self.u, self.top, self.tables, self.version = data, u, int(top), tables, int(version)
        self._kept = kept

    def run(self) -> None:
        """Raise ValueError unless the stream decodes to the tile (the check's own error, or the decoder's on what it
        cannot read)."""
        kept, self._kept = self._kept, None
        if kept is None:
            raise ValueError("lossless tile: its check has run already")
        rows, cols = self.u.shape
        flat = self.u.ravel()
        lattice, passes = _geometry((rows, cols), self.version >= HALVES_VERSION)
        dec = Decoder(self.tables, self.data)
        if not np.array_equal(_decode_lattice(dec, rows, cols, lattice.size), flat[lattice]):
            raise ValueError("lossless tile: its coarsest lattice decodes to other values (an encoder fault)")
        kept = iter(kept)
        for at, _neighbours, far in passes:
            if at.size:
                side, pred, context, values, distinct = next(kept)
                if _read_side(dec, far, self.version >= ACTIVITY_VERSION) != side:
                    raise ValueError("lossless tile: a pass's side information decodes otherwise (an encoder fault)")
                if not np.array_equal(_decode_pass(dec, context, (pred, values, distinct, 1, self.top)),
                                      np.take(flat, at)):
                    raise ValueError("lossless tile: a pass decodes to other values (an encoder fault)")

    def register(self) -> None:
        """Leave the check for the next decode of this stream (the latest _CHECKED_KEPT are kept)."""
        with _checked_lock:
            _checked[_check_key(self.data, *self.u.shape, self.top, self.tables, self.version)] = self
            while len(_checked) > _CHECKED_KEPT:
                del _checked[next(iter(_checked))]


def _check_key(data: bytes, rows: int, cols: int, top: int, tables: EntropyTables, version: int) -> tuple:
    """A registered check's key: its stream's length, the tile, its tables (a check keeps them alive: their id is
    theirs alone) and version; the stream's bytes are compared on a match."""
    return len(data), int(rows), int(cols), int(top), id(tables), int(version)


_checked = {}
_checked_lock = threading.Lock()
_CHECKED_KEPT = 3
"""How many registered checks decode keeps (the latest; a colour image's three planes): a lossless encode's
comparison reads them, once each. Each holds about 26 bytes a pixel of its tile until then."""


def checked(data: bytes, rows: int, cols: int, top: int, tables: EntropyTables, version: int) -> np.ndarray | None:
    """The tile `data` decodes to (with these tables) when an encoder registered its LosslessCheck and the check
    holds, else None (then decode it); a registered check is taken by the first decode that asks."""
    key = _check_key(data, rows, cols, top, tables, version)
    with _checked_lock:
        check = _checked.get(key)
        if check is None or bytes(data) != check.data:
            return None
        del _checked[key]
    try:
        check.run()
    except ValueError:
        return None
    return check.u.copy()


def _decode_lattice(dec: Decoder, rows: int, cols: int, size: int) -> np.ndarray:
    """The coarsest lattice's `size` symbols, as `encode` codes them first, back to (quantized) values, flat."""
    lat_shape = (-(-rows // STRIDE), -(-cols // STRIDE))
    return _lattice_values(_decode_pass(dec, np.zeros(size, np.int64)).reshape(lat_shape)).ravel()


def _read_side(dec: Decoder, far: tuple, activity: bool) -> tuple:
    """A pass's side information as `encode` writes it: (the second half's ring, diagonal or not, else None; mode;
    weights or None; activity measure; split or None); `activity`: a tile of ACTIVITY_VERSION or later."""
    diagonals = bool(dec.decode_uniform(1, 2)[0]) if len(far) > FAR_VALUES else None
    mode = int(dec.decode_uniform(1, len(MODES))[0])
    kind = MODES[mode][0]
    measure, split, weights = 0, None, None
    if activity:
        measure = int(dec.decode_uniform(1, len(ACTIVITIES))[0])
        if kind and dec.decode_uniform(1, 2)[0]:
            split = (int(dec.decode_naturals(1)[0]), _decode_weights(dec, kind))
    if kind:
        weights = _decode_weights(dec, kind)
    return diagonals, mode, weights, measure, split


def decode(data: bytes, rows: int, cols: int, top: int, tables: EntropyTables, max_error: int = 0,
           version: int = HALVES_VERSION) -> np.ndarray:
    """Inverse of `encode` (of the same `version`): the (rows, cols) tile, every value checked within 0..top."""
    if version not in VERSIONS:
        raise ValueError(f"direct tile of unknown version {version} (this decoder reads {VERSIONS})")
    if max_error == 0:
        known = checked(data, rows, cols, top, tables, version)
        if known is not None:  # the stream's encoder left its check, and it holds (LosslessCheck)
            return known
    lattice, passes = _geometry((int(rows), int(cols)), version >= HALVES_VERSION)
    step = 2 * int(max_error) + 1
    dec = Decoder(tables, data)
    u = np.zeros(rows * cols, np.int64)
    lat = _decode_lattice(dec, rows, cols, lattice.size)
    if step > 1:
        _check(lat, (top + step // 2) // step)
        lat = np.minimum(lat * step, top)
    _check(lat, top)
    u[lattice] = lat
    errors = _Energy(int(rows), int(cols), top, version >= HALVES_VERSION) if version >= ACTIVITY_VERSION else None
    for i, (at, neighbours, far) in enumerate(passes):
        if at.size:
            diagonals, mode, weights, activity, split = _read_side(dec, far, errors is not None)
            if diagonals is not None:  # the second half of a split edges pass: its ring
                far = _ring(far, diagonals)
            kind, wide, patterned = MODES[mode]
            energy = None
            if errors is not None and (ACTIVITIES[activity][1] or split is not None):
                energy = errors.mean(i, at)
            nb, fv, pattern = _gather(u, neighbours, far if kind or wide else None, kind == 2)
            pred, context, values, distinct = _predict_mode(mode, weights, nb, fv, pattern, top, activity, energy,
                                                            split)
            vals = _decode_pass(dec, context, (pred, values, distinct, step, top))
            _check(vals, top)
            u[at] = vals
            if errors is not None:
                errors.add(at, vals, pred)
    return u.reshape(rows, cols)


def _decode_weights(dec: Decoder, kind: int) -> tuple:
    weights = tuple(_unzigzag(dec.decode_naturals(LINEAR_TERMS[kind])).tolist())
    if max(abs(w) for w in weights) >= MAX_WEIGHT:
        raise ValueError("direct tile: prediction weights out of range")
    return weights


def _check(v: np.ndarray, top: int) -> None:
    if v.size and (int(v.min()) < 0 or int(v.max()) > top):
        raise ValueError(f"direct tile decodes to values outside 0..{top} (a corrupt stream?)")
