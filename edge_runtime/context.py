"""The integer context model that picks an entropy table for every wavelet coefficient.

It runs identically on the encoder and the decoder, on any CPU: every quantity is an
integer computed with numpy int64 arithmetic, so no float rounding can flip a table
index (DESIGN.md, Determinism).

Coding order. Subbands go coarse to fine: LL, then for each level from the coarsest,
the horizontal (cH), vertical (cV) and diagonal (cD) details. Each subband is coded in
three vectorized passes over a 2×2 polyphase split:
  phase 0: (even row, even col)  context: parent neighbourhood, siblings
  phase 1: (odd, odd)            + the 4 diagonal neighbours (all phase 0)
  phase 2: the rest              + the 4 direct neighbours (all phase 0 or 1)
Neighbours across the subband border are mirrored (reflect without repeating the edge
sample), which keeps the row/column parity, so a mirrored neighbour is always one that
is already decoded.

Features are integer magnitude codes g(v) = round(16·log2(1 + |v|)), from integer thresholds
(mag_code: no libm decides a code). The table index of a coefficient is
    k = clip((w · f + 2**(SHIFT-1)) >> SHIFT, 0, num_scales - 1)
with integer weights w per (level, orientation, phase) group and f = (1, parent,
parent 3×3 mean, sibling 1, sibling 2, spatial sum, spatial max), plus, in a trained model,
a small hidden layer of ReLU units over the same features (ContextWeights.group_index).
The LL subband is coded around an integer prediction (the mean of its decoded
neighbours), with the neighbours' spread as the feature.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

SHIFT = 12
NUM_FEATURES = 7
_G_MAX = 1 << 20
_G_TABLE = 1 << 12
"""Codes of 0.._G_TABLE-1 come from a table built at import; larger magnitudes (rare) by a search of _G_STEPS."""


def _code_steps(top: int) -> np.ndarray:
    """steps[c - 1]: the least integer v >= 0 with round(16·log2(1 + v)) >= c, for c = 1, 2, ... up to the code of
    `top`, in exact integer arithmetic (no libm): 16·log2(1 + v) >= c - 1/2 exactly when (1 + v)^32 >= 2^(2c - 1),
    never with equality (32·log2 of an integer is never odd), so there is no tie to round."""
    steps = []
    c = 1
    while True:
        v = max(int(2.0 ** ((2 * c - 1) / 32.0)) - 2, 0)  # a float guess, then exact steps to the least v
        while v > 0 and v ** 32 >= 1 << (2 * c - 1):
            v -= 1
        while (1 + v) ** 32 < 1 << (2 * c - 1):
            v += 1
        if v > top:
            return np.array(steps, np.int64)
        steps.append(v)
        c += 1


_G_STEPS = _code_steps(_G_MAX)
_G = np.searchsorted(_G_STEPS, np.arange(_G_TABLE), side="right").astype(np.int64)
_G_FLOAT = _G.astype(np.float64)  # the same codes as integer-valued floats (DetailBandContext's features)
FEATURE_MAX = 4 * len(_G_STEPS)
"""No feature exceeds this (a spatial sum of four codes): bounds the context network's dot products."""
ORIENTATIONS = ("H", "V", "D")


def mag_code(v: np.ndarray, as_float: bool = False) -> np.ndarray:
    """Integer magnitude code g(|v|) = round(16·log2(1+|v|)), clipped at 2**20: the number of code steps at or
    below |v| (_code_steps), exact on every CPU. `as_float`: the same integers as float64 (DetailBandContext)."""
    a = np.abs(v)
    if not a.size or int(a.max()) < _G_TABLE:  # the usual case: one table lookup
        return (_G_FLOAT if as_float else _G).take(a)
    a = np.minimum(a, _G_MAX)
    big = a >= _G_TABLE
    if np.ndim(a) == 0:
        out = np.searchsorted(_G_STEPS, a, side="right").astype(np.int64)
    else:
        out = _G[np.where(big, 0, a)]
        out[big] = np.searchsorted(_G_STEPS, a[big], side="right")
    return out.astype(np.float64) if as_float else out


def phase_masks(shape) -> tuple:
    """The three polyphase masks of `shape` (read-only, cached per shape)."""
    return _phase_masks(tuple(int(n) for n in shape))


@functools.lru_cache(maxsize=64)
def _phase_masks(shape: tuple) -> tuple:
    r = (np.arange(shape[0]) % 2)[:, None]
    c = (np.arange(shape[1]) % 2)[None, :]
    p0 = (r == 0) & (c == 0)
    p1 = (r == 1) & (c == 1)
    masks = (p0, p1, ~(p0 | p1))
    for m in masks:
        m.setflags(write=False)
    return masks


def shifted(a: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """a[i+dr, j+dc] with mirrored borders (parity-preserving), for |dr|, |dc| <= 1."""
    padded = _pad1(a)
    return padded[1 + dr:1 + dr + a.shape[0], 1 + dc:1 + dc + a.shape[1]]


DIAG = ((-1, -1), (-1, 1), (1, -1), (1, 1))
DIRECT = ((-1, 0), (1, 0), (0, -1), (0, 1))


def spatial_features(known_codes: np.ndarray, phase: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum and max of the magnitude codes of the already-decoded neighbours of each position."""
    if phase == 0:
        z = np.zeros_like(known_codes)
        return z, z
    offs = DIAG if phase == 1 else DIRECT
    nb = np.stack([shifted(known_codes, dr, dc) for dr, dc in offs])
    return nb.sum(0), nb.max(0)


def _pad1(a: np.ndarray) -> np.ndarray:
    """`a` padded by one sample each side, mirrored as `shifted` mirrors (edge-repeated when a side < 2):
    np.pad's "reflect", by slices (several times faster on the small bands of the coarse levels)."""
    h, w = a.shape
    if h < 2 or w < 2:
        return np.pad(a, 1, mode="edge")
    out = np.empty((h + 2, w + 2), a.dtype)
    out[1:-1, 1:-1] = a
    out[0, 1:-1] = a[1]
    out[-1, 1:-1] = a[-2]
    out[:, 0] = out[:, 2]
    out[:, -1] = out[:, -3]
    return out


def parent_features(parent_codes: np.ndarray | None, shape) -> tuple[np.ndarray, np.ndarray]:
    """The parent's code and the mean code of its 3×3 neighbourhood, upsampled to `shape`."""
    if parent_codes is None:
        z = np.zeros(shape, dtype=np.int64)
        return z, z
    up = lambda a: np.repeat(np.repeat(a, 2, 0), 2, 1)[:shape[0], :shape[1]]
    p, n = up(parent_codes), up(parent_means(parent_codes))
    if p.shape != tuple(shape):  # parent smaller than expected (odd sizes): pad by edge
        p = np.pad(p, ((0, shape[0] - p.shape[0]), (0, shape[1] - p.shape[1])), mode="edge")
        n = np.pad(n, ((0, shape[0] - n.shape[0]), (0, shape[1] - n.shape[1])), mode="edge")
    return p, n


def parent_means(parent_codes: np.ndarray) -> np.ndarray:
    """The mean code (floor) of each position's 3×3 neighbourhood, mirrored at the borders as `_pad1`."""
    p = _pad1(parent_codes)
    h, w = parent_codes.shape
    rows = p[:, :w] + p[:, 1:w + 1]  # the 3x3 sum as a row sum, then a column sum: integers, the same sum
    rows += p[:, 2:w + 2]
    total = rows[:h] + rows[1:h + 1]
    total += rows[2:h + 2]
    if total.dtype.kind == "f":  # integers below 2**53: the correctly rounded quotient floors to the same integer
        total /= 9
        return np.floor(total, out=total)
    total //= 9
    return total


def gather_sum_max(padded: np.ndarray, positions: tuple, out_sum: np.ndarray, out_max: np.ndarray) -> None:
    """Sum and max of `padded` (a flat array) over the neighbour position arrays `positions`, into the outs."""
    first, *more = (padded.take(at) for at in positions)
    out_sum[:] = first
    out_max[:] = first
    for nb in more:
        out_sum += nb
        np.maximum(out_max, nb, out=out_max)


HIDDEN_LIMIT = 1 << 40
"""Bound on |hidden weight|, |hidden bias| and |output weight|: keeps every int64 sum far from overflow."""


@dataclass
class ContextWeights:
    """Integer weights: detail[level-1, orientation, phase, feature] and ll[phase, 2].

    Optionally a hidden layer per (level, orientation, phase) group, the learned part of the
    context network: hidden[..., j, :] (H units over the same features), hidden_bias[..., j]
    and out[..., j]; see `group_index`. Without it (None) the index is linear in the features.
    """

    detail: np.ndarray   # (levels, 3, 3, NUM_FEATURES) int64
    ll: np.ndarray       # (3, 2) int64: bias and spread weight per LL phase
    hidden: np.ndarray | None = None       # (levels, 3, 3, H, NUM_FEATURES) int64
    hidden_bias: np.ndarray | None = None  # (levels, 3, 3, H) int64
    out: np.ndarray | None = None          # (levels, 3, 3, H) int64

    def __post_init__(self):
        self.detail = np.asarray(self.detail, dtype=np.int64)
        self.ll = np.asarray(self.ll, dtype=np.int64)
        if self.detail.ndim != 4 or self.detail.shape[1:] != (3, 3, NUM_FEATURES):
            raise ValueError(f"detail weights must be (levels, 3, 3, {NUM_FEATURES}), got {self.detail.shape}")
        if self.ll.shape != (3, 2):
            raise ValueError(f"LL weights must be (3, 2), got {self.ll.shape}")
        parts = (self.hidden, self.hidden_bias, self.out)
        if any(p is not None for p in parts):
            if any(p is None for p in parts):
                raise ValueError("the context model's hidden layer needs hidden, hidden_bias and out together")
            self.hidden, self.hidden_bias, self.out = (np.asarray(p, dtype=np.int64) for p in parts)
            lv, h = self.detail.shape[0], self.hidden.shape[3] if self.hidden.ndim == 5 else -1
            if (self.hidden.shape != (lv, 3, 3, h, NUM_FEATURES) or self.hidden_bias.shape != (lv, 3, 3, h)
                    or self.out.shape != (lv, 3, 3, h) or h < 1):
                raise ValueError(f"hidden layer shapes {self.hidden.shape}, {self.hidden_bias.shape}, "
                                 f"{self.out.shape} do not match detail weights {self.detail.shape}")
            if max(int(np.abs(p).max()) for p in parts) > HIDDEN_LIMIT:
                raise ValueError("hidden layer weights out of range")

    @property
    def levels(self) -> int:
        return self.detail.shape[0]

    def to_arrays(self) -> dict:
        out = {"detail": self.detail, "ll": self.ll}
        if self.hidden is not None:
            out.update(hidden=self.hidden, hidden_bias=self.hidden_bias, out=self.out)
        return out

    @classmethod
    def from_arrays(cls, z) -> "ContextWeights":
        extra = {k: z[k] for k in ("hidden", "hidden_bias", "out") if k in z}
        return cls(detail=z["detail"], ll=z["ll"], **extra)

    def group_index(self, features: np.ndarray, level: int, orientation: int, phase: int,
                    num_scales: int, constant_first: bool = False) -> np.ndarray:
        """Table index of every row of `features` for the group (level, orientation, phase).

        Linear part acc = w·f; with a hidden layer, h_j = max(0, (a_j·f + b_j + 2**(SHIFT-1)) >> SHIFT)
        and acc += Σ_j c_j·h_j; then k = clip((acc + 2**(SHIFT-1)) >> SHIFT, 0, num_scales-1).
        All int64: the same index on every CPU. `constant_first`: the first feature is 1 on every row (as
        DetailBandContext's are), so the float path adds the biases through its weights (the same sums).
        """
        lv = min(level, self.levels) - 1
        w = self.detail[lv, orientation, phase]
        if self.hidden is None:
            return table_index(features, w, num_scales)
        if self._float_exact():
            return self._group_index_float(features, lv, orientation, phase, num_scales, constant_first)
        f = features.astype(np.int64)
        acc = f @ w
        pre = f @ self.hidden[lv, orientation, phase].T + self.hidden_bias[lv, orientation, phase]
        h = np.maximum((pre + (1 << (SHIFT - 1))) >> SHIFT, 0)
        acc = acc + h @ self.out[lv, orientation, phase]
        return np.clip((acc + (1 << (SHIFT - 1))) >> SHIFT, 0, num_scales - 1)

    def _float_exact(self) -> bool:
        """Whether every sum group_index forms stays below 2**53 for features <= FEATURE_MAX.

        Then integer-valued float64 arithmetic (BLAS, any summation order) gives exactly the int64
        results, and ``(x + 2**(SHIFT-1)) >> SHIFT`` is floor((x + 2**(SHIFT-1)) · 2**-SHIFT), also
        exact: the same indices, several times faster (numpy has no BLAS for int64).
        """
        if getattr(self, "_exact", None) is None:
            limit = float(1 << 53)
            pre = (np.abs(self.hidden).sum(-1) * FEATURE_MAX + np.abs(self.hidden_bias)).astype(np.float64)
            h_max = np.floor((pre + (1 << (SHIFT - 1))) / (1 << SHIFT))
            acc = (np.abs(self.detail).sum(-1) * FEATURE_MAX).astype(np.float64) + \
                (np.abs(self.out).astype(np.float64) * h_max).sum(-1)
            self._exact = bool(pre.max() < limit / 4 and acc.max() < limit / 4)
            if self._exact:  # one product per group: [linear | hidden] weights side by side, times 2**-SHIFT
                inv = 1.0 / (1 << SHIFT)  # a power of two: every scaled sum stays exact (below 2**53 ulps)
                self._float = (np.concatenate([self.detail[..., None, :], self.hidden], axis=-2)
                               .swapaxes(-1, -2).astype(np.float64) * inv,
                               np.concatenate([np.zeros(self.hidden_bias.shape[:-1] + (1,)),
                                               self.hidden_bias + (1 << (SHIFT - 1))], axis=-1).astype(np.float64) * inv,
                               self.out.astype(np.float64) * inv)
                self._groups = {}  # _group_index_float's per-group arrays, made as the groups come
        return self._exact

    def _group_index_float(self, features, lv, orientation, phase, num_scales, constant_first=False):
        key = (lv, orientation, phase, constant_first)
        group = self._groups.get(key)
        if group is None:  # the group's weights transposed, its bias as a column: once per group
            weights, bias, out = (a[lv, orientation, phase] for a in self._float)
            weights_t, bias = np.array(weights.T), np.ascontiguousarray(bias[:, None])
            if constant_first:  # the biases (and the final rounding's half) as the constant feature's weights
                weights_t[:, 0] += bias[:, 0]
                weights_t[0, 0] += 0.5
                bias = None
            group = self._groups[key] = (weights_t, bias, out)
        weights_t, bias, out = group
        # transposed, (1 + H, n): row 0 the linear part / 2**SHIFT, then the hidden units', each row contiguous
        y = weights_t @ np.asarray(features, np.float64).T
        if bias is not None:
            y += bias
        h = np.floor(y[1:], out=y[1:])
        np.maximum(h, 0.0, out=h)
        lin = y[0]
        lin += out @ h
        if bias is not None:
            return _index_of_scaled(lin, num_scales)
        np.floor(lin, out=lin)  # the half is in already
        np.maximum(lin, 0.0, out=lin)  # np.clip's own checks cost more than these two passes on most passes
        np.minimum(lin, num_scales - 1, out=lin)
        return lin.astype(np.int64)


def table_index(features: np.ndarray, w: np.ndarray, num_scales: int) -> np.ndarray:
    """k = clip((w·f + 2**(SHIFT-1)) >> SHIFT, 0, num_scales-1), as int64 arithmetic defines it.

    Features are magnitude codes (0..FEATURE_MAX). When every sum then stays far below 2**53, the
    product runs in integer-valued float64 (BLAS; exact in any summation order, as ContextWeights'
    float path) and the shift is a floor after scaling by 2**-SHIFT, also exact: the same indices."""
    w = np.asarray(w, np.int64)
    if float(np.abs(w).sum()) * FEATURE_MAX < float(1 << 50):
        return _index_of_scaled(np.asarray(features, np.float64) @ (w.astype(np.float64) * (1.0 / (1 << SHIFT))),
                                num_scales)
    acc = features.astype(np.int64) @ w
    return np.clip((acc + (1 << (SHIFT - 1))) >> SHIFT, 0, num_scales - 1)


def _index_of_scaled(acc: np.ndarray, num_scales: int) -> np.ndarray:
    """clip((acc + 2**(SHIFT-1)) >> SHIFT) of an integer-valued float64 acc already scaled by 2**-SHIFT
    (exact: floor of a value with at most SHIFT fraction bits), in place; int64 table indices."""
    acc += 0.5
    np.floor(acc, out=acc)
    np.maximum(acc, 0.0, out=acc)
    return np.minimum(acc, num_scales - 1, out=acc).astype(np.int64)


def detail_features(q: np.ndarray, phase: int, known: np.ndarray, parent: np.ndarray | None,
                    siblings: list[np.ndarray]) -> np.ndarray:
    """Feature matrix (n, NUM_FEATURES) for the positions of `phase` in detail subband q.

    `known` marks the positions of q already decoded; `siblings` are the already decoded
    subbands of the same level (0, 1 or 2 of them), `parent` the same-orientation subband
    one level coarser (None at the coarsest level).
    """
    mask = phase_masks(q.shape)[phase]
    codes = np.where(known, mag_code(q), 0)
    sp_sum, sp_max = spatial_features(codes, phase)
    par, par_nb = parent_features(None if parent is None else mag_code(parent), q.shape)
    sib = [mag_code(s) for s in siblings] + [np.zeros(q.shape, np.int64)] * (2 - len(siblings))
    cols = [np.ones(q.shape, np.int64), par, par_nb, sib[0], sib[1], sp_sum, sp_max]
    return np.stack([c[mask] for c in cols], axis=1)


def interleave_rows(first: np.ndarray, second: np.ndarray | None = None) -> np.ndarray:
    """The values of two position grids whose rows alternate (the first grid's row 0 above the second's row 0,
    above the first's row 1, ...; the first has as many rows as the second or one more), flat in row-major order
    of their positions; `first` alone, flat and contiguous."""
    if second is None:
        return np.ascontiguousarray(first).ravel()
    (na, wa), (nb, wb) = first.shape, second.shape
    out = np.empty(na * wa + nb * wb, np.result_type(first, second))
    pairs = out[:nb * (wa + wb)].reshape(nb, wa + wb)
    pairs[:, :wa] = first[:nb]
    pairs[:, wa:] = second
    out[nb * (wa + wb):] = first[nb:].ravel()  # a last row of the first grid
    return out


@functools.lru_cache(maxsize=64)
def phase_positions(shape: tuple) -> tuple:
    """Flat (row-major) positions of each phase of `shape`, in the order `band[mask]` lists them,
    and the same positions in the band padded by one sample (`_pad1`)."""
    rows, cols = shape
    out = []
    for mask in phase_masks(shape):
        flat = np.flatnonzero(mask)
        r, c = np.divmod(flat, cols)
        out.append((flat, (r + 1) * (cols + 2) + (c + 1)))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _parent_positions(shape: tuple, parent_shape: tuple) -> tuple:
    """Per phase, the flat position in the parent band of each position's parent: (r // 2, c // 2),
    the parent's last row or column beyond its edge (as parent_features upsamples)."""
    h, w = parent_shape
    out = []
    for flat, _padded in phase_positions(shape):
        r, c = np.divmod(flat, shape[1])
        out.append(np.minimum(r // 2, h - 1) * w + np.minimum(c // 2, w - 1))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _neighbour_positions(shape: tuple) -> tuple:
    """Per phase, the flat positions in the padded band of the already decoded neighbours (`spatial_features`)."""
    stride = shape[1] + 2
    out = [()]
    for phase, offs in ((1, DIAG), (2, DIRECT)):
        padded = phase_positions(shape)[phase][1]
        out.append(tuple(padded + (dr * stride + dc) for dr, dc in offs))
    return tuple(out)


class DetailBandContext:
    """The features of one detail subband, pass by pass, as `detail_features` defines them.

    What does not change between a band's three passes (parent and sibling codes) is computed
    once (the parent's 3x3 means, at the parent's own size), and only the positions of a pass are
    gathered: the same integers, far fewer operations.
    The codes g(|v|) of the band's decoded positions (0 elsewhere) are kept padded by one mirrored
    sample, as `_pad1` pads them, so a pass's neighbours are plain gathers; `codes` is the band
    itself, which, when the band is complete, serves as the parent or sibling codes of the bands
    after it. Feature matrices are column-major (each feature contiguous) and integer-valued float64
    (codes and their sums are far below 2**53: exact), the type the context network's float path
    multiplies, so no pass converts them.
    """

    def __init__(self, shape, parent_codes: np.ndarray | None, sibling_codes: list):
        self.shape = tuple(int(n) for n in shape)
        self._parent = None
        if parent_codes is not None:  # its codes and 3x3 means, read at each position's parent (parent_features)
            parent_codes = np.asarray(parent_codes, np.float64)
            self._parent = (np.ravel(parent_codes), parent_means(parent_codes).ravel(),
                            _parent_positions(self.shape, parent_codes.shape))
        self._siblings = [np.ravel(np.asarray(s, np.float64)) for s in sibling_codes]
        rows, cols = self.shape
        self._padded = np.zeros((rows + 2, cols + 2))
        self._reflect = rows >= 2 and cols >= 2  # else edge-repeated, as _pad1
        self.positions = phase_positions(self.shape)
        self._neighbours = _neighbour_positions(self.shape)

    @property
    def codes(self) -> np.ndarray:
        return self._padded[1:-1, 1:-1]

    def features(self, phase: int) -> np.ndarray:
        flat = self.positions[phase][0]
        f = np.empty((len(flat), NUM_FEATURES), order="F")
        f[:, 0] = 1
        if self._parent is None:
            f[:, 1:3] = 0
        else:
            codes, means, at = self._parent
            codes.take(at[phase], out=f[:, 1])
            means.take(at[phase], out=f[:, 2])
        for j in range(2):
            if j < len(self._siblings):
                self._siblings[j].take(flat, out=f[:, 3 + j])
            else:
                f[:, 3 + j] = 0
        if phase == 0:
            f[:, 5:] = 0
        else:
            gather_sum_max(self._padded.ravel(), self._neighbours[phase], f[:, 5], f[:, 6])
        return f

    def set(self, phase: int, values: np.ndarray) -> None:
        """Record the decoded values of a pass."""
        p = self._padded
        p.ravel()[self.positions[phase][1]] = mag_code(values, as_float=True)  # no cast in the scatter
        top, bottom = (2, -3) if self._reflect else (1, -2)  # the border again, mirrored as _pad1 mirrors
        p[0, 1:-1], p[-1, 1:-1] = p[top, 1:-1], p[bottom, 1:-1]
        p[:, 0], p[:, -1] = p[:, top], p[:, bottom]


def ll_prediction(q: np.ndarray, phase: int, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer prediction and neighbour-spread code for the LL positions of `phase`."""
    if phase == 0:
        n = len(phase_positions(tuple(q.shape))[0][0])
        return np.zeros(n, np.int64), np.zeros(n, np.int64)
    # the 4 neighbours (diagonal, or direct) of the phase's positions, read in the band padded as `shifted` pads
    padded = _pad1(np.where(known, q, 0)).ravel()
    first, *more = (padded.take(at) for at in _neighbour_positions(tuple(q.shape))[phase])
    total, low, high = first.copy(), first.copy(), first
    for nb in more:
        total += nb
        np.minimum(low, nb, out=low)
        np.maximum(high, nb, out=high)
    total += 2
    total //= 4
    return total, mag_code(high - low)


def ll_index(spread: np.ndarray, phase: int, w: ContextWeights, num_scales: int) -> np.ndarray:
    f = np.stack([np.ones_like(spread), spread], axis=1)
    return table_index(f, w.ll[phase], num_scales)


def iterate_passes(subbands: list):
    """Yield (band, level, orientation) in coding order: ('LL', L, None), then details coarse to fine.

    `subbands` is [LL, (H_L, V_L, D_L), ..., (H_1, V_1, D_1)] (pywt wavedec2 order).
    """
    levels = len(subbands) - 1
    yield 0, levels, None
    for i in range(1, levels + 1):
        for o in range(3):
            yield i, levels - i + 1, o
