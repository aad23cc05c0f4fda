"""Entropy coding of one plane's quantized wavelet subbands: context model + range coder.

Stream layout (little-endian): int32 LL mean, then the range coder's 32-bit words.
The geometry (subband shapes) is not in this stream: the container records the plane
size and the decomposition, from which both sides derive the shapes.
"""
from __future__ import annotations

import struct

import numpy as np

from edge_runtime import context as ctx
from edge_runtime.entropy import Decoder, Encoder, EntropyTables


class CodingModel:
    """What both sides need to code subbands: integer context weights and integer tables."""

    def __init__(self, weights: ctx.ContextWeights, tables: EntropyTables):
        self.weights = weights
        self.tables = tables

    @property
    def num_scales(self) -> int:
        return self.tables.num_tables

    def detail_w(self, level: int, orientation: int, phase: int) -> np.ndarray:
        lv = min(level, self.weights.levels) - 1
        return self.weights.detail[lv, orientation, phase]


def _walk(subbands, model: CodingModel, visit):
    """Drive the coding order; `visit(values_or_None, indices, pred, band_key, mask)` codes one pass.

    `visit` returns the decoded (or given) values of the pass, so the same walk serves
    the encoder (values known up front) and the decoder (values appear pass by pass).
    """
    levels = len(subbands) - 1
    decoded = [None] * (levels + 1)
    decoded[0] = np.zeros_like(subbands[0])
    for i in range(1, levels + 1):
        decoded[i] = tuple(np.zeros_like(b) for b in subbands[i])
    # LL
    ll = decoded[0]
    known = np.zeros(ll.shape, bool)
    for phase in range(3):
        mask = ctx.phase_masks(ll.shape)[phase]
        pred, spread = ctx.ll_prediction(ll, phase, known)
        idx = ctx.ll_index(spread, phase, model.weights, model.num_scales)
        ll[mask] = visit(("LL", phase), idx, pred, mask, 0)
        known |= mask
    for i in range(1, levels + 1):
        level = levels - i + 1
        parent_set = decoded[i - 1] if i > 1 else None
        for o in range(3):
            band = decoded[i][o]
            known = np.zeros(band.shape, bool)
            siblings = [decoded[i][s] for s in range(o)]
            parent = parent_set[o] if parent_set is not None else None
            for phase in range(3):
                mask = ctx.phase_masks(band.shape)[phase]
                f = ctx.detail_features(band, phase, known, parent, siblings)
                idx = ctx.table_index(f, model.detail_w(level, o, phase), model.num_scales)
                band[mask] = visit((level, o, phase), idx, None, mask, f)
                known |= mask
    return decoded


def encode_subbands(subbands, model: CodingModel) -> bytes:
    """Code [LL, (H, V, D) coarse→fine] integer subbands into bytes."""
    subbands = [np.asarray(subbands[0], np.int64)] + [tuple(np.asarray(b, np.int64) for b in s)
                                                      for s in subbands[1:]]
    mean = int(np.round(subbands[0].mean())) if subbands[0].size else 0
    src = [subbands[0] - mean] + subbands[1:]
    enc = Encoder(model.tables)
    state = {"band": None}

    def visit(key, idx, pred, mask, _f):
        vals = _source_band(src, key)[mask]
        enc.encode(vals - (pred if pred is not None else 0), idx)
        return vals

    _walk(src, model, visit)
    return struct.pack("<i", mean) + enc.getvalue()


def _source_band(src, key):
    if key[0] == "LL":
        return src[0]
    level, o, _ = key
    levels = len(src) - 1
    return src[levels - level + 1][o]


def decode_subbands(data: bytes, shapes, model: CodingModel):
    """Inverse of encode_subbands; `shapes` is [LL shape, (H, V, D shapes), ...]."""
    if len(data) < 4:
        raise ValueError("subband stream shorter than its 4-byte header")
    (mean,) = struct.unpack_from("<i", data, 0)
    template = [np.zeros(shapes[0], np.int64)] + [tuple(np.zeros(s, np.int64) for s in lv) for lv in shapes[1:]]
    dec = Decoder(model.tables, data[4:])

    def visit(_key, idx, pred, _mask, _f):
        v = dec.decode(idx)
        return v + (pred if pred is not None else 0)

    out = _walk(template, model, visit)
    out[0] = out[0] + mean
    return out


def collect(subbands, model: CodingModel):
    """Every pass's (key, features, symbols) for fitting the context weights; no coding."""
    subbands = [np.asarray(subbands[0], np.int64)] + [tuple(np.asarray(b, np.int64) for b in s)
                                                      for s in subbands[1:]]
    mean = int(np.round(subbands[0].mean())) if subbands[0].size else 0
    src = [subbands[0] - mean] + subbands[1:]
    rows = []

    def visit(key, idx, pred, mask, f):
        vals = _source_band(src, key)[mask]
        sym = vals - (pred if pred is not None else 0)
        rows.append((key, f, sym, idx))
        return vals

    _walk(src, model, visit)
    return rows


def estimate_bits(subbands, model: CodingModel) -> float:
    """Bits the coder will spend (the range coder adds at most a few words), header included."""
    rows = collect(subbands, model)
    return 32 + sum(model.tables.bits(sym, idx) for _k, _f, sym, idx in rows)
