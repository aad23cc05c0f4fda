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
    JPEG-LS's, 0 for the first value), then the table of those (the number of distinct ones minus
    one, the smallest (zigzag), the gaps between the next ones minus one, the counts minus one of all
    but the last, frequencies as direct's sent tables; a single one codes nothing more) and each
    escape's as an index into it (categorical), in coding order;
  - every rank, in the order of the wavefronts t = 2 r + c (t = 0, 1, ...; rows ascending within
    one), under counts learned while coding: each of the 203 partitions starts with a count of 1 for
    each rank it can have (its classes and ESCAPE), 0 for the others; a wavefront's ranks are coded
    under their partition's frequencies (_frequencies of its counts), and each then adds COUNT_STEP to
    its count; the frequencies follow the counts at every REFRESH-th wavefront (t = 0, REFRESH, ...). No table is sent: a partition that occurs a few times costs a few bits.
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


def _sent_bits(values: np.ndarray, counts: np.ndarray) -> float:
    """Bits of the escapes' sent table of `values` (ascending) with `counts` (_send_table), and of its symbols."""
    m = values.size
    desc = natural_bits(np.array([m - 1, int(direct._zigzag(int(values[0])))])).sum()
    if m == 1:
        return float(desc)
    desc += natural_bits(np.diff(values) - 1).sum() + natural_bits(counts[:-1] - 1).sum()
    f = direct._frequencies(counts)
    return float(desc - (counts * np.log2(f / float(1 << PRECISION))).sum())


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


def _learned_rows(part: np.ndarray, rank: np.ndarray, starts: np.ndarray):
    """(first position, frequency rows) of the ranks of successive runs of wavefronts, every rank under its
    context's learned counts before its wavefront (module docstring); `part` (the contexts), `rank` in coding
    order."""
    counts = _POSSIBLE.copy()
    flat = counts.ravel()
    freqs = _frequencies(counts)
    a0, rows = 0, []
    for t in range(0, starts.size - 1, REFRESH):  # REFRESH wavefronts at a time, under the same frequencies
        a, b = int(starts[t]), int(starts[min(t + REFRESH, starts.size - 1)])
        rows.append(freqs[part[a:b]])
        coded = np.bincount(part[a:b] * (ESCAPE + 1) + rank[a:b], minlength=flat.size)
        flat += coded * COUNT_STEP
        changed = np.flatnonzero(coded.reshape(counts.shape).any(axis=1))  # the others' frequencies stay
        freqs[changed] = _frequencies(counts[changed])
        if b - a0 >= _ROWS_CHUNK:
            yield a0, np.concatenate(rows)
            a0, rows = b, []
    if rows:
        yield a0, np.concatenate(rows)


def estimated_bytes(u: np.ndarray) -> float:
    """About the bytes `encode(u)` writes, without coding."""
    u = np.asarray(u, np.int64)
    mask, rank, esc, pred = _symbols(u.ravel(), tuple(u.shape))
    p, nb, starts = _geometry(tuple(u.shape))
    bits = 0.0
    for a, f in _learned_rows(_contexts(mask, rank, p, nb[0]), rank, starts):
        r = rank[a:a + len(f)]
        bits -= float(np.log2(f[np.arange(len(f)), r] / float(1 << PRECISION)).sum())
    bits += natural_bits(np.array([esc.size]))[0]
    if esc.size:
        bits += 1 + _escape_choice(esc, pred)[0]
    return bits / 8.0


def _escape_choice(esc: np.ndarray, pred: np.ndarray) -> tuple:
    """(bits, whether differences to the prediction, the symbols) of the escapes' cheaper form."""
    best = None
    for diff, sym in ((0, esc), (1, esc - pred)):
        values, cnt = np.unique(sym, return_counts=True)
        bits = _sent_bits(values, cnt)
        if best is None or bits < best[0]:
            best = (bits, diff, sym)
    return best


def _send_table(enc: Encoder, values: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
    """The escapes' sent table (direct's form): its frequencies, or None for a single value (nothing more coded)."""
    enc.encode_naturals([len(values) - 1, int(direct._zigzag(int(values[0])))])
    if len(values) == 1:
        return None
    enc.encode_naturals(np.diff(values) - 1)
    enc.encode_naturals(counts[:-1] - 1)
    return direct._frequencies(counts)


def _read_table(dec: Decoder, n: int, low: int, limit: int) -> tuple:
    """(values, frequencies or None) of the escapes' sent table: n symbols with values in low..limit."""
    m1, z = (int(t) for t in dec.decode_naturals(2))
    if m1 > limit - low or m1 >= n:
        raise ValueError(f"raster tile: a table of {m1 + 1} symbols for {n} positions")
    values = int(direct._unzigzag(z)) + np.concatenate([[0], np.cumsum(dec.decode_naturals(m1) + 1)])
    if values[0] < low or values[-1] > limit:
        raise ValueError("raster tile: a table's symbols are out of range")
    if m1 == 0:
        return values, None
    counts = dec.decode_naturals(m1) + 1
    counts = np.append(counts, n - int(counts.sum()))
    if counts[-1] < 1:
        raise ValueError("raster tile: a table's counts exceed its positions")
    return values, direct._frequencies(counts)


def encode(u: np.ndarray, tables: EntropyTables) -> bytes:
    """Range-coded words of integer tile u (values >= 0), coded losslessly in raster order (module docstring);
    `tables`: the residual model's (the stream uses none of them: the coder's uniform and categorical models)."""
    u = np.asarray(u, np.int64)
    if u.size > MAX_PIXELS:
        raise ValueError(f"a raster tile holds at most {MAX_PIXELS} pixels, not {u.size}")
    mask, rank, esc, pred = _symbols(u.ravel(), tuple(u.shape))
    enc = Encoder(tables)
    enc.encode_naturals([esc.size])
    if esc.size:
        _bits, diff, sym = _escape_choice(esc, pred)
        enc.encode_uniform([diff], 2)
        values, cnt = np.unique(sym, return_counts=True)
        freqs = _send_table(enc, values, cnt)
        if freqs is not None:
            enc.encode_categorical(np.searchsorted(values, sym), freqs)
    p, nb, starts = _geometry(tuple(u.shape))
    for a, f in _learned_rows(_contexts(mask, rank, p, nb[0]), rank, starts):
        enc.encode_categorical_rows(rank[a:a + len(f)], f / float(1 << PRECISION))
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
        values, freqs = _read_table(dec, escapes, -top if diff else 0, top)
        esc = np.full(escapes, values[0]) if freqs is None else values[dec.decode_categorical(freqs, escapes)]
    counts = _POSSIBLE.copy()
    flat = counts.ravel()
    probs = _frequencies(counts) / float(1 << PRECISION)
    touched = np.zeros(len(counts), bool)  # the contexts counted since the last refresh: only their rows change
    p, nb, starts = _geometry((rows, cols))
    u = np.full(n + 1, -1, np.int64)  # the last: the first value's neighbours
    coded = np.full(n + 1, ESCAPE, np.int64)  # each position's rank (_contexts)
    used = 0
    for t in range(starts.size - 1):
        a, b = int(starts[t]), int(starts[t + 1])
        if t % REFRESH == 0 and t:
            changed = np.flatnonzero(touched)
            probs[changed] = _frequencies(counts[changed]) / float(1 << PRECISION)
            touched[changed] = False
        if a == b:  # a tile of one column: odd wavefronts are empty
            continue
        v = u[nb[:, a:b]]
        mask = _masks(v)
        context = _PART3[mask] + _W_KINDS[coded[nb[0, a:b]]]  # every mask of equal values is a partition
        rank = dec.decode_categorical_rows(probs[context])
        flat += np.bincount(context * (ESCAPE + 1) + rank, minlength=flat.size) * COUNT_STEP
        touched[context] = True
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
