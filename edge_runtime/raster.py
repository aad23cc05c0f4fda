"""Lossless tiles of graphics in raster order: each value as which of its causal neighbours holds it.

Test patterns, screen captures, overlays and annotations are rectangles of one value. In raster order
almost every value of such a tile repeats one of its 6 causal neighbours

    W (r, c-1), N (r-1, c), NW (r-1, c-1), NE (r-1, c+1), WW (r, c-2), NN (r-2, c),

and which one is told by which of them are equal: inside a rectangle all are, at its left edge W differs
from N, at a checkerboard's corner W and N agree against NW. The interpolation pyramid of
edge_runtime.direct sees 4 values at distance s around each position and cannot tell on which side of
them an edge runs; here an edge is told once, where it starts (the 8-bit test pattern: 1.6 KB instead
of 7 KB).

Each value is coded as a rank: the neighbours' distinct values are numbered in the order above (the
restricted growth string of their partition), and the rank is that of the first neighbour holding the
value, or ESCAPE when none does. The context is the partition itself (which of the 15 pairs of
neighbours are equal: a 15-bit mask, of which 203 are partitions) and how W was coded: rank 0,
another rank, or ESCAPE (_W_KINDS; on the train split's graphics 0.15 % smaller than the partition
alone, the two SMPTE patterns 1.5 %). A neighbour outside the tile is replaced: in the first row N,
NW, NE and NN by W; in the first column W, NW and WW by N; in the last column NE by N; in the second
column WW by W; in the second row NN by N. The first value has none (all six are a value no tile
holds, its W counts as an escape), so it is an escape.

Stream (one range-coded stream, integers as Encoder.encode_naturals codes them unless said):
  - the number of escapes; when any, a uniform bit: what an escape codes, its value (0) or its
    difference to the median edge detector's prediction of it, the median of W, N and W + N - NW (1:
    JPEG-LS's, 0 for the first value), then those, in coding order, as one context of
    edge_runtime.direct codes its symbols (a sent table or one of the residual model's, then the
    symbols: direct._encode_pass);
  - every rank, in the order of the wavefronts t = 2 r + c (t = 0, 1, ...; rows ascending within
    one), under counts learned while coding (_Learned): each of the 609 contexts starts with a count
    of 1 for each rank its partition can have (its classes and ESCAPE), 0 for the others; a
    wavefront's ranks are coded under their context's frequencies (_frequencies of its counts), and
    each then adds COUNT_STEP to its count; the frequencies follow the counts at every REFRESH-th
    wavefront (t = REFRESH, 2 REFRESH, ...). No table is sent: a context that occurs a few times costs
    a few bits.
Every neighbour of a position (r, c) lies on an earlier wavefront (W and NE on t - 1, N and WW on
t - 2, NW on t - 3, NN on t - 4), so the decoder decodes a wavefront's ranks in one call and their
values at once: rows + columns calls for the tile, each vectorized. All integer: the same values
on every CPU.
"""
from __future__ import annotations

import numpy as np

from edge_runtime import direct
from edge_runtime.entropy import PRECISION, Decoder, Encoder, EntropyTables, natural_bits
from edge_runtime.threads import shape_cache

__all__ = ["ESCAPE", "MAX_PIXELS", "decode", "encode", "estimated_bytes"]

NEIGHBOURS = 6
ESCAPE = NEIGHBOURS
"""The rank of a value that none of its neighbours holds."""
MAX_PIXELS = direct.MAX_PIXELS
"""The largest tile coded in raster order: its geometry holds 7 int32 positions a pixel (117 MB at 2048x2048)."""
_PAIRS = tuple((i, j) for j in range(NEIGHBOURS) for i in range(j))
_PAIR_I = np.array([i for i, _j in _PAIRS])
_PAIR_J = np.array([j for _i, j in _PAIRS])
_PAIR_BITS = (1 << np.arange(len(_PAIRS))).astype(np.int64)
MASKS = 1 << len(_PAIRS)


def _partitions() -> tuple:
    """(rank table, classes, class table): for every mask of equal pairs, the neighbour that holds each rank (the
    first of its class; ESCAPE past the classes), how many classes there are (0 where the mask is not a partition:
    some equal pairs not transitive, which no values give) and each neighbour's class (its rank)."""
    first = np.full((MASKS, NEIGHBOURS + 1), ESCAPE, np.int8)
    classes = np.zeros(MASKS, np.int8)
    class_of = np.zeros((MASKS, NEIGHBOURS), np.int8)
    bit = {p: b for b, p in enumerate(_PAIRS)}

    def grow(rgs: list) -> None:  # every restricted growth string of NEIGHBOURS elements
        if len(rgs) == NEIGHBOURS:
            mask = sum(1 << bit[i, j] for i, j in _PAIRS if rgs[i] == rgs[j])
            k = max(rgs) + 1
            classes[mask] = k
            class_of[mask] = rgs
            for rank in range(k):
                first[mask, rank] = rgs.index(rank)
            return
        for g in range(max(rgs, default=-1) + 2):
            grow(rgs + [g])
    grow([])
    return first, classes, class_of


_FIRST, _CLASSES, _CLASS_OF = _partitions()
_PART = np.full(MASKS, -1, np.int64)
_PART[_CLASSES > 0] = np.arange(int((_CLASSES > 0).sum()))
"""Each partition's number (0..202) from its mask; -1 for a mask that is none."""
_PART3 = _PART * 3
"""The first context of each partition (its 3 are partition * 3 + how W was coded)."""
_W_KINDS = np.array([0] + [1] * (NEIGHBOURS - 1) + [2])
"""The context's second part: how W was coded, by its rank: 0, another rank, or ESCAPE (2; also where W is outside
the tile)."""
_POSSIBLE = np.repeat(((np.arange(ESCAPE + 1)[None, :] < _CLASSES[_CLASSES > 0][:, None])
                       | (np.arange(ESCAPE + 1)[None, :] == ESCAPE)).astype(np.int64), 3, axis=0)
"""Per context (partition * 3 + how W was coded), the ranks it can have: its partition's classes' and ESCAPE (the
learned counts' start)."""
COUNT_STEP = 4
"""What a coded rank adds to its context's count (the start: 1 for every rank it can have). Set on the train
split's graphics (two SMPTE patterns, an ultrasound's three planes, a CT with a flat surround): 4 and 8 within
0.3 %, 16 0.5 % larger; the frequencies refreshed every wavefront 0.1 % smaller than every 4th."""
REFRESH = 4
"""The frequencies follow the learned counts every REFRESH wavefronts (the first, the REFRESH+1-th, ...)."""
_ROWS_CHUNK = 1 << 16
"""The encoder codes the ranks of wavefronts of about this many positions at a time (bounded memory)."""


@shape_cache(maxsize=2)
def _geometry(shape: tuple) -> tuple:
    """(positions, neighbours, wavefront starts) of a rows x cols tile: every flat position in coding order
    (wavefronts t = 2 r + c ascending, rows ascending within one), its 6 neighbours' flat positions (6 x n, with
    the module docstring's replacements; rows * cols, one past the tile, for the first value's) and where each
    wavefront starts in that order (rows + ... + 1 entries, the last n)."""
    rows, cols = shape
    n = rows * cols
    index = np.int32 if 2 * n < 1 << 31 else np.int64  # MAX_PIXELS: int32
    r = np.repeat(np.arange(rows, dtype=index), cols)
    c = np.tile(np.arange(cols, dtype=index), rows)
    t = 2 * r + c
    order = np.lexsort((r, t))
    r, c = r[order], c[order]
    p = r * cols + c
    none = np.full(n, n, index)
    w = np.where(c > 0, p - 1, np.where(r > 0, p - cols, none))
    north = np.where(r > 0, p - cols, w)
    nb = np.empty((NEIGHBOURS, n), index)
    nb[0] = w
    nb[1] = north
    nb[2] = np.where((r > 0) & (c > 0), p - cols - 1, north)  # north is W in the first row, N in the first column
    nb[3] = np.where((r > 0) & (c < cols - 1), p - cols + 1, north)
    nb[4] = np.where(c > 1, p - 2, w)
    nb[5] = np.where(r > 1, p - 2 * cols, north)
    starts = np.searchsorted(t[order], np.arange(2 * (rows - 1) + cols + 1))
    return p, nb, starts


def _masks(v: np.ndarray) -> np.ndarray:
    """The mask of equal pairs of the neighbours' values `v` (6 x n): in one product for a wavefront, pair by pair
    for a whole tile (the encoder: no 15 x n gathers)."""
    if v.shape[1] <= _MASKS_GATHERED:
        return _PAIR_BITS @ (v[_PAIR_I] == v[_PAIR_J])
    mask = np.zeros(v.shape[1], np.int64)
    for bit, (i, j) in enumerate(_PAIRS):
        mask |= np.left_shift(v[i] == v[j], bit, dtype=np.int64)
    return mask


_MASKS_GATHERED = 1 << 12


def _med(v: np.ndarray) -> np.ndarray:
    """The median edge detector's prediction from the neighbours' values `v` (6 x n; 0 where W is outside)."""
    w, n, nw = v[0], v[1], v[2]
    lo, hi = np.minimum(w, n), np.maximum(w, n)
    pred = np.where(nw >= hi, lo, np.where(nw <= lo, hi, w + n - nw))
    return np.where(w < 0, 0, pred)


def _symbols(u_flat: np.ndarray, shape: tuple) -> tuple:
    """(masks, ranks, escaped values, their predictions) of tile u (flat, int64), in coding order; in chunks of
    _SYMBOLS_CHUNK positions (bounded memory)."""
    p, nb, _starts = _geometry(shape)
    ext = np.append(u_flat, -1)
    mask, rank = np.empty(p.size, np.int64), np.empty(p.size, np.int64)
    esc, pred = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for a in range(0, p.size, _SYMBOLS_CHUNK):
        b = min(p.size, a + _SYMBOLS_CHUNK)
        v, y = ext[nb[:, a:b]], ext[p[a:b]]
        mask[a:b] = _masks(v)
        hit = v == y
        found = hit.any(0)
        # the rank: the class of the first neighbour holding the value
        rank[a:b] = np.where(found, _CLASS_OF[mask[a:b], np.argmax(hit, axis=0)], ESCAPE)
        missed = np.flatnonzero(~found)
        esc.append(y[missed])
        pred.append(_med(v[:, missed]))
    return mask, rank, np.concatenate(esc), np.concatenate(pred)


_SYMBOLS_CHUNK = 1 << 18


def _frequencies(counts: np.ndarray) -> np.ndarray:
    """Integer frequencies (rows summing to 2**PRECISION) of learned counts (rows): 1 for every rank counted at
    all, the rest in proportion to the counts, the remainder to the first largest; 0 for a rank it cannot have."""
    some = counts > 0
    spare = (1 << PRECISION) - some.sum(1)
    f = some + counts * spare[:, None] // counts.sum(1)[:, None]
    f[np.arange(len(f)), counts.argmax(1)] += (1 << PRECISION) - f.sum(1)
    return f


def _contexts(mask: np.ndarray, rank: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The context of every position (coding order, _geometry's `p`; `w`: its W's flat position) from its mask and
    every position's rank."""
    coded = np.full(p.size + 1, ESCAPE, np.int64)  # by flat position; the last: outside the tile
    coded[p] = rank
    return _PART3[mask] + _W_KINDS[coded[w]]


class _Learned:
    """The contexts' learned counts and the probabilities coded under them (module docstring): `add` counts coded
    ranks, `refresh` makes the probabilities follow the counts (only the rows of contexts counted since the last)."""

    def __init__(self):
        self.counts = _POSSIBLE.copy()
        self.probs = _frequencies(self.counts) / float(1 << PRECISION)
        self.touched = np.zeros(len(self.counts), bool)

    def add(self, context: np.ndarray, rank: np.ndarray) -> None:
        self.counts.ravel()[:] += np.bincount(context * (ESCAPE + 1) + rank, minlength=self.counts.size) * COUNT_STEP
        self.touched[context] = True

    def refresh(self) -> None:
        changed = np.flatnonzero(self.touched)
        self.probs[changed] = _frequencies(self.counts[changed]) / float(1 << PRECISION)
        self.touched[changed] = False


def _learned_rows(context: np.ndarray, rank: np.ndarray, starts: np.ndarray):
    """(first position, probability rows) of the ranks of successive runs of wavefronts, every rank under its
    context's learned counts (`context`, `rank` in coding order): REFRESH wavefronts at a time, as the decoder
    refreshes them."""
    learned = _Learned()
    a0, rows = 0, []
    for t in range(0, starts.size - 1, REFRESH):
        a, b = int(starts[t]), int(starts[min(t + REFRESH, starts.size - 1)])
        rows.append(learned.probs[context[a:b]])
        learned.add(context[a:b], rank[a:b])
        learned.refresh()
        if b - a0 >= _ROWS_CHUNK:
            yield a0, np.concatenate(rows)
            a0, rows = b, []
    if rows:
        yield a0, np.concatenate(rows)


def estimated_bytes(u: np.ndarray, tables: EntropyTables) -> float:
    """About the bytes `encode(u, tables)` writes, without coding."""
    u = np.asarray(u, np.int64)
    mask, rank, esc, pred = _symbols(u.ravel(), tuple(u.shape))
    p, nb, starts = _geometry(tuple(u.shape))
    bits = 0.0
    for a, probs in _learned_rows(_contexts(mask, rank, p, nb[0]), rank, starts):
        bits -= float(np.log2(probs[np.arange(len(probs)), rank[a:a + len(probs)]]).sum())
    bits += natural_bits(np.array([esc.size]))[0]
    if esc.size:
        bits += 1 + _escape_choice(esc, pred, tables)[0]
    return bits / 8.0


def _escape_choice(esc: np.ndarray, pred: np.ndarray, tables: EntropyTables) -> tuple:
    """(bits, whether differences to the prediction, the symbols) of the escapes' cheaper form, each coded as one
    context of edge_runtime.direct (a sent table or one of the residual model's)."""
    best = None
    for diff, sym in ((0, esc), (1, esc - pred)):
        bits = direct._plans(sym, np.array([sym.size]), tables)[0][0]
        if best is None or bits < best[0]:
            best = (bits, diff, sym)
    return best


def encode(u: np.ndarray, tables: EntropyTables) -> bytes:
    """Range-coded words of integer tile u (values >= 0), coded losslessly in raster order (module docstring);
    `tables`: the residual model's (the escapes may be coded under one of them)."""
    u = np.asarray(u, np.int64)
    if u.size > MAX_PIXELS:
        raise ValueError(f"a raster tile holds at most {MAX_PIXELS} pixels, not {u.size}")
    mask, rank, esc, pred = _symbols(u.ravel(), tuple(u.shape))
    enc = Encoder(tables)
    enc.encode_naturals([esc.size])
    if esc.size:
        _bits, diff, sym = _escape_choice(esc, pred, tables)
        enc.encode_uniform([diff], 2)
        direct._encode_pass(enc, sym, np.zeros(sym.size, np.int64))
    p, nb, starts = _geometry(tuple(u.shape))
    for a, probs in _learned_rows(_contexts(mask, rank, p, nb[0]), rank, starts):
        enc.encode_categorical_rows(rank[a:a + len(probs)], probs)
    return enc.getvalue()


def decode(data: bytes, rows: int, cols: int, top: int, tables: EntropyTables) -> np.ndarray:
    """Inverse of `encode`: the (rows, cols) tile, every value checked within 0..top."""
    rows, cols = int(rows), int(cols)
    n = rows * cols
    if n > MAX_PIXELS:
        raise ValueError(f"raster tile of {rows}x{cols} pixels (at most {MAX_PIXELS})")
    dec = Decoder(tables, data)
    escapes = int(dec.decode_naturals(1)[0])
    if escapes > n:
        raise ValueError(f"raster tile: {escapes} escapes for {n} positions")
    esc, diff = np.zeros(0, np.int64), 0
    if escapes:
        diff = int(dec.decode_uniform(1, 2)[0])
        esc = direct._decode_symbols(dec, escapes)  # values, or differences: the decoded values are checked at the end
    learned = _Learned()
    p, nb, starts = _geometry((rows, cols))
    u = np.full(n + 1, -1, np.int64)  # the last: the first value's neighbours
    coded = np.full(n + 1, ESCAPE, np.int64)  # each position's rank (_contexts)
    used = 0
    for t in range(starts.size - 1):
        a, b = int(starts[t]), int(starts[t + 1])
        if t % REFRESH == 0 and t:
            learned.refresh()
        if a == b:  # a tile of one column: odd wavefronts are empty
            continue
        v = u[nb[:, a:b]]
        mask = _masks(v)
        context = _PART3[mask] + _W_KINDS[coded[nb[0, a:b]]]  # every mask of equal values is a partition
        rank = dec.decode_categorical_rows(learned.probs[context])
        learned.add(context, rank)
        coded[p[a:b]] = rank
        holder = _FIRST[mask, rank]
        out = v[np.minimum(holder, NEIGHBOURS - 1), np.arange(b - a)]
        escaped = np.flatnonzero(holder == ESCAPE)
        if escaped.size:
            if used + escaped.size > escapes:
                raise ValueError("raster tile: more escapes than sent (a corrupt stream?)")
            out[escaped] = esc[used:used + escaped.size]
            if diff:
                out[escaped] += _med(v[:, escaped])
            used += escaped.size
        u[p[a:b]] = out
    if used != escapes:
        raise ValueError("raster tile: fewer escapes than sent (a corrupt stream?)")
    u = u[:n]
    if u.min() < 0 or u.max() > top:
        raise ValueError(f"raster tile decodes to values outside 0..{top} (a corrupt stream?)")
    return u.reshape(rows, cols)
