"""Entropy coding of integer symbols with fixed integer tables, through constriction's range coder.

Every table is an integer frequency vector summing to 2**PRECISION over an alphabet of
``2*T + 2`` symbols: the values ``-T..T`` followed by one escape symbol. Values beyond
±T are coded as the escape plus an Exp-Golomb payload (sign, exponent, mantissa), each
part coded with a fixed uniform model, in vectorized calls.

Symbols are coded in groups: all symbols that share a table are coded in one call,
tables in ascending order. The decoder rebuilds the same groups because the table
indices come from the deterministic integer context model (edge_runtime.context).
Tables are built once (by the exporter, or by ``laplace_tables``) and stored as
integers; they are never recomputed from floats at decode time.
"""
from __future__ import annotations

import functools

import numpy as np

try:  # constriction's package layout exposes submodules as attributes only
    import constriction
    _stream = constriction.stream
except ImportError as exc:  # pragma: no cover
    raise ImportError("edge_runtime needs the 'constriction' package: pip install constriction") from exc

PRECISION = 24
_ESC_EXP_MAX = 40


class EntropyTables:
    """The integer probability tables of one entropy model, plus cached coder models."""

    def __init__(self, freqs: list[np.ndarray], tails: np.ndarray):
        if len(freqs) != len(tails):
            raise ValueError("one tail half-width per table is needed")
        self.freqs = [np.asarray(f, dtype=np.int64) for f in freqs]
        self.tails = np.asarray(tails, dtype=np.int64)
        for k, f in enumerate(self.freqs):
            if f.ndim != 1 or len(f) != 2 * self.tails[k] + 2:
                raise ValueError(f"table {k}: expected {2 * self.tails[k] + 2} entries, found {f.shape}")
            if f.min() < 1 or f.sum() != (1 << PRECISION):
                raise ValueError(f"table {k}: frequencies must be >= 1 and sum to 2**{PRECISION}")
        self._models = [None] * len(self.freqs)
        self._all_built = False
        self._log2p = [np.log2(f / float(1 << PRECISION)) for f in self.freqs]

    @property
    def num_tables(self) -> int:
        return len(self.freqs)

    def model(self, k: int):
        if self._models[k] is None:
            self._models[k] = categorical(self.freqs[k])
        return self._models[k]

    def models(self) -> list:
        """Every table's coder model, built on first use (a decoder indexes the list: no call per group)."""
        if not self._all_built:
            for k in range(len(self._models)):
                self.model(k)
            self._all_built = True
        return self._models

    # -- serialization (stored inside the model bundle's tables.npz) --
    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        lengths = np.array([len(f) for f in self.freqs], dtype=np.int64)
        return {prefix + "freqs": np.concatenate(self.freqs).astype(np.uint32),
                prefix + "lengths": lengths, prefix + "tails": self.tails}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "") -> "EntropyTables":
        flat = np.asarray(arrays[prefix + "freqs"], dtype=np.int64)
        lengths = np.asarray(arrays[prefix + "lengths"], dtype=np.int64)
        if lengths.sum() != len(flat):
            raise ValueError("entropy tables: lengths do not match the frequency data")
        return cls(np.split(flat, np.cumsum(lengths)[:-1]), arrays[prefix + "tails"])

    # -- where a symbol sits in table k: values -T..T, then the escape --
    def positions(self, k: int, symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in table k, escaped?) of each symbol."""
        t = int(self.tails[k])
        esc = np.abs(symbols) > t
        return np.where(esc, 2 * t + 1, symbols + t), esc

    def _group_bits(self, k: int, symbols: np.ndarray, pos: np.ndarray, esc: np.ndarray) -> np.ndarray:
        b = -self._log2p[k][pos]
        if esc.any():  # sign bit + Exp-Golomb payload
            b[esc] += 1 + natural_bits(np.abs(symbols[esc]) - int(self.tails[k]) - 1)
        return b

    # -- rate estimate, exactly what the coder will spend up to its few bytes of overhead --
    def symbol_bits(self, symbols: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Per-symbol code length in bits (escapes included), same order as `symbols`."""
        symbols = np.asarray(symbols, dtype=np.int64)
        indices = np.asarray(indices, dtype=np.int64)
        k = np.broadcast_to(indices, symbols.shape)
        t = self.tails[k]
        esc = np.abs(symbols) > t
        bits = self._bits_matrix()
        out = np.take(bits, k * bits.shape[1] + np.where(esc, 2 * t + 1, symbols + t))  # bits[k, position]
        if esc.any():  # sign bit + Exp-Golomb payload
            out[esc] += 1 + natural_bits(np.abs(symbols[esc]) - t[esc] - 1)
        return out

    def _bits_matrix(self) -> np.ndarray:
        """-log2 p of every (table, position), tables padded to the longest with +inf (never indexed)."""
        if getattr(self, "_bits", None) is None:
            m = np.full((len(self.freqs), max(len(f) for f in self.freqs)), np.inf)
            for k, lp in enumerate(self._log2p):
                m[k, :len(lp)] = -lp
            self._bits = m
        return self._bits

    def bits(self, symbols: np.ndarray, indices: np.ndarray) -> float:
        return float(self.symbol_bits(np.ravel(symbols), np.ravel(indices)).sum())


def group_spans(indices: np.ndarray, bound: int | None = None) -> tuple[np.ndarray, list]:
    """The coding order of symbols with table `indices`, and its runs [(table k, start, end), ...].

    Groups go by table, ascending, each group's symbols in their order (one stable sort): the
    order the format defines. `bound`, when the caller knows 0 <= indices < bound, saves checking it.
    """
    n = int(indices.size)
    if n and bound is None:
        lo, hi = int(indices.min()), int(indices.max())
        bound = hi + 1 if lo >= 0 else None
    if n and bound is not None and bound <= 1 << 16:
        # 8- or 16-bit keys: a radix sort; the runs from the count of each table
        keys = indices.astype(np.uint8 if bound <= 1 << 8 else np.uint16)
        order = np.argsort(keys, kind="stable")
        counts = np.bincount(keys)
        if bound <= 1 << 8:  # a few tables: the runs in Python (fewer numpy calls, most passes are short)
            spans, start = [], 0
            for k, c in enumerate(counts.tolist()):
                if c:
                    spans.append((k, start, start + c))
                    start += c
            return order, spans
        ends = np.cumsum(counts)
        used = np.flatnonzero(counts)
        return order, list(zip(used.tolist(), (ends[used] - counts[used]).tolist(), ends[used].tolist()))
    order = np.argsort(indices, kind="stable")
    sorted_idx = indices[order]
    cut = np.flatnonzero(sorted_idx[1:] != sorted_idx[:-1]) + 1
    starts = [0] + cut.tolist()
    ends = cut.tolist() + [n]
    return order, [(int(sorted_idx[a]), a, b) for a, b in zip(starts, ends)]


def natural_bits(excess: np.ndarray) -> np.ndarray:
    """Bits of integers >= 0 as Encoder.encode_naturals codes them (an escape's payload): exponent symbol
    (6 bits uniform) + mantissa bits."""
    e = np.floor(np.log2(excess.astype(np.float64) + 1)).astype(np.int64)
    return 6 + e


def _split_escape(excess: np.ndarray):
    v = excess.astype(np.int64) + 1
    e = np.zeros_like(v)
    while True:  # bit length, vectorized; at most 40 rounds
        more = (v >> (e + 1)) > 0
        if not more.any():
            break
        e += more
    mant = v - (np.int64(1) << e)
    return e, mant


def laplace_tables(num_scales: int, scale_min: float, scale_max: float, deadzone: float,
                   tail_mass: float = 1e-9) -> EntropyTables:
    """Tables of a Laplacian quantized by a deadzone quantizer, scales on a geometric grid.

    With rounding offset r = 0.5 - deadzone, symbol 0 covers |c| < (1 - r) steps and
    symbol k > 0 covers [k - r, k + 1 - r) steps. Built once in float64 and stored as
    integers.
    """
    r = 0.5 - deadzone
    scales = scale_grid(num_scales, scale_min, scale_max)
    freqs, tails = [], []
    for s in scales:
        t = int(np.clip(np.ceil(s * -np.log(tail_mass) + 2), 2, 4096))
        k = np.arange(1, t + 1, dtype=np.float64)
        p_pos = 0.5 * (np.exp(-(k - r) / s) - np.exp(-(k + 1 - r) / s))
        p0 = 1.0 - np.exp(-(1 - r) / s)
        p_esc = max(np.exp(-(t + 1 - r) / s), 1e-12)
        p = np.concatenate([p_pos[::-1], [p0], p_pos, [p_esc]])
        freqs.append(quantize_pmf(p))
        tails.append(t)
    return EntropyTables(freqs, np.array(tails))


def scale_grid(num_scales: int, scale_min: float, scale_max: float) -> np.ndarray:
    return np.exp(np.linspace(np.log(scale_min), np.log(scale_max), num_scales))


def quantize_pmf(p: np.ndarray) -> np.ndarray:
    """Integer frequencies >= 1 summing to 2**PRECISION, close to p (largest-remainder rule)."""
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum()
    total = 1 << PRECISION
    spare = total - len(p)
    if spare < 0:
        raise ValueError("alphabet larger than the coder precision")
    raw = p * spare
    f = np.floor(raw).astype(np.int64)
    rest = spare - int(f.sum())
    if rest > 0:
        order = np.argsort(-(raw - f), kind="stable")
        f[order[:rest]] += 1
    return f + 1


@functools.lru_cache(maxsize=64)
def _uniform(size: int):
    """constriction's uniform model over 0..size-1, made once per size (models are immutable; every pass codes its
    two offsets under the 64-symbol one)."""
    return _stream.model.Uniform(size)


class Encoder:
    """Accumulates groups of symbols into one range-coded stream."""

    def __init__(self, tables: EntropyTables, track: bool = False):
        self.tables = tables
        self.track = track
        self.estimated_bits = 0.0  # the tables' code length of what was encoded (when tracking)
        self._enc = _stream.queue.RangeEncoder()

    def encode(self, symbols: np.ndarray, indices: np.ndarray, bound: int | None = None) -> None:
        """Code `symbols` with the tables `indices` (0 <= indices < `bound` when the caller knows one)."""
        symbols = np.asarray(symbols, dtype=np.int64).ravel()
        indices = np.asarray(indices, dtype=np.int64).ravel()
        if symbols.shape != indices.shape:
            raise ValueError("one table index per symbol is needed")
        if symbols.size == 0:
            return
        order, spans = group_spans(indices, bound)
        s = symbols.take(order)  # coding order: tables ascending, stream order within
        t = self.tables.tails.take(indices.take(order))
        esc = np.abs(s) > t
        pos = np.where(esc, 2 * t + 1, s + t).astype(np.int32)
        encode, models = self._enc.encode, self.tables.models()
        for kk, a, b in spans:
            encode(pos[a:b], models[kk])
        if self.track:
            self.estimated_bits += float(self.tables.symbol_bits(s, np.take(indices, order)).sum())
        if esc.any():
            self._encode_escapes(s[esc], t[esc] + 1)

    def encode_table(self, symbols: np.ndarray, k: int) -> None:
        """Symbols all under table k: the stream of encode(symbols, k for each), without grouping them."""
        s = np.asarray(symbols, dtype=np.int64).ravel()
        if s.size == 0:
            return
        pos, esc = self.tables.positions(k, s)
        self._enc.encode(pos.astype(np.int32), self.tables.model(k))
        if self.track:
            self.estimated_bits += float(self.tables.symbol_bits(s, k).sum())
        if esc.any():
            self._encode_escapes(s[esc], np.full(int(esc.sum()), int(self.tables.tails[k]) + 1))

    def _encode_escapes(self, v: np.ndarray, base: np.ndarray) -> None:
        self._enc.encode((v < 0).astype(np.int32), _uniform(2))
        self._encode_naturals(np.abs(v) - base)  # their bits are already in symbol_bits

    def encode_naturals(self, v: np.ndarray) -> None:
        """Integers >= 0 (side information): Exp-Golomb, each exponent uniform over 64, then the mantissas
        grouped by exponent (the payload of an escape)."""
        v = np.asarray(v, np.int64).ravel()
        if v.size and self.track:
            self.estimated_bits += float(natural_bits(v).sum())
        self._encode_naturals(v)

    def _encode_naturals(self, v: np.ndarray) -> None:
        if v.size == 0:
            return
        e, mant = _split_escape(v)
        if e.max() >= _ESC_EXP_MAX:
            raise ValueError("coefficient too large for the escape code")
        self._enc.encode(e.astype(np.int32), _uniform(64))
        for n in np.flatnonzero(np.bincount(e)):  # the exponents present, ascending (np.unique imports numpy.ma)
            if n == 0:
                continue
            m = mant[e == n]
            # mantissas of up to 40 bits, sent as a high part and a 20-bit low part
            if n > 20:
                self._enc.encode((m >> 20).astype(np.int32), _uniform(1 << (int(n) - 20)))
            self._enc.encode((m & ((1 << 20) - 1)).astype(np.int32), _uniform(1 << min(int(n), 20)))

    def encode_categorical(self, positions: np.ndarray, freqs: np.ndarray) -> None:
        """Positions 0..len(freqs)-1 under one integer frequency table (>= 1 each, summing to 2**PRECISION)."""
        positions = np.asarray(positions, np.int32)
        self._enc.encode(positions, categorical(freqs))
        if self.track:
            self.estimated_bits += float(-np.log2(np.asarray(freqs, np.float64)[positions] / (1 << PRECISION)).sum())

    def encode_categorical_rows(self, positions: np.ndarray, probabilities: np.ndarray) -> None:
        """Positions, each under its own row of `probabilities` (n x alphabet; integer frequencies / 2**PRECISION,
        exact in float64; a position's own entry never 0): one call for symbols of many contexts."""
        self._enc.encode(np.asarray(positions, np.int32), _FAMILY, np.asarray(probabilities, np.float64))
        if self.track:
            p = np.take_along_axis(probabilities, np.asarray(positions, np.int64)[:, None], 1)
            self.estimated_bits += float(-np.log2(p).sum())

    def encode_uniform(self, values: np.ndarray, size: int) -> None:
        """Values in 0..size-1, each with probability 1/size (side information)."""
        values = np.asarray(values, np.int32)
        self._enc.encode(values, _uniform(size))
        if self.track:
            self.estimated_bits += values.size * np.log2(size)

    def getvalue(self) -> bytes:
        return self._enc.get_compressed().tobytes()


class Decoder:
    """Decodes groups in the order the encoder wrote them."""

    def __init__(self, tables: EntropyTables, data: bytes):
        self.tables = tables
        if len(data) % 4:
            raise ValueError("entropy-coded data must be a whole number of 32-bit words")
        words = np.frombuffer(data, dtype=np.uint32).copy()
        self._dec = _stream.queue.RangeDecoder(words)

    def decode(self, indices: np.ndarray, bound: int | None = None) -> np.ndarray:
        """Inverse of Encoder.encode (the same `bound`, or None)."""
        indices = np.asarray(indices, dtype=np.int64).ravel()
        n = indices.size
        if n == 0:
            return np.zeros(0, np.int64)
        order, spans = group_spans(indices, bound)
        decode, models = self._dec.decode, self.tables.models()
        out = np.empty(n, np.int64)
        out[order] = np.concatenate([decode(models[k], b - a) for k, a, b in spans])  # to the positions' order
        t = self.tables.tails[indices]
        esc = out == 2 * t + 1
        out -= t
        if esc.any():  # escapes follow the groups, in their coding order
            coded = order[esc[order]]
            out[coded] = self._decode_escapes(t[coded] + 1)
        return out

    def decode_table(self, k: int, n: int) -> np.ndarray:
        """Inverse of Encoder.encode_table: n symbols under table k."""
        t = int(self.tables.tails[k])
        vals = self._dec.decode(self.tables.model(k), n).astype(np.int64) - t
        esc = vals == t + 1
        if esc.any():
            vals[esc] = self._decode_escapes(np.full(int(esc.sum()), t + 1, np.int64))
        return vals

    def decode_uniform(self, n: int, size: int) -> np.ndarray:
        return self._dec.decode(_uniform(size), n).astype(np.int64)

    def decode_categorical(self, freqs: np.ndarray, n: int) -> np.ndarray:
        return self._dec.decode(categorical(freqs), n).astype(np.int64)

    def decode_categorical_rows(self, probabilities: np.ndarray) -> np.ndarray:
        """Inverse of Encoder.encode_categorical_rows: one position per row of `probabilities`."""
        return self._dec.decode(_FAMILY, probabilities).astype(np.int64)

    def _decode_escapes(self, base: np.ndarray) -> np.ndarray:
        sign = self._dec.decode(_uniform(2), len(base)).astype(np.int64)
        mag = self.decode_naturals(len(base)) + base
        return np.where(sign == 1, -mag, mag)

    def decode_naturals(self, n: int) -> np.ndarray:
        """Inverse of Encoder.encode_naturals."""
        if n == 0:
            return np.zeros(0, np.int64)
        e = self._dec.decode(_uniform(64), n).astype(np.int64)
        if e.max() >= _ESC_EXP_MAX:  # never written by the encoder; Uniform(2**(e-20)) would panic in Rust
            raise ValueError(f"escape exponent {int(e.max())} out of range (the encoder writes < {_ESC_EXP_MAX})")
        mant = np.zeros(n, dtype=np.int64)
        for b in np.flatnonzero(np.bincount(e)):  # the exponents present, ascending
            if b == 0:
                continue
            sel = np.flatnonzero(e == b)
            hi = 0
            if b > 20:
                hi = self._dec.decode(_uniform(1 << (int(b) - 20)), len(sel)).astype(np.int64)
            lo = self._dec.decode(_uniform(1 << min(int(b), 20)), len(sel)).astype(np.int64)
            mant[sel] = (hi << 20) | lo
        return (np.int64(1) << e) + mant - 1


_FAMILY = _stream.model.Categorical(perfect=False)
"""constriction's categorical models with their probabilities given per symbol (encode_categorical_rows)."""


def categorical(freqs: np.ndarray):
    """constriction's model of an integer frequency table summing to 2**PRECISION (exact in float64)."""
    return _stream.model.Categorical(np.asarray(freqs, np.float64) / float(1 << PRECISION), perfect=False)
