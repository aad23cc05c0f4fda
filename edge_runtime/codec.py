"""Image <-> .kcd stream for the wavelet codec: the one encoder and decoder both sides call.

The wavelet transforms come from a `transforms` object with `analysis(plane, levels)` and
`synthesis(bands, levels)`: TFLite graphs on the edge, the Keras layers on the workstation.
Everything else (normalization, quantization, context model, entropy coding, container) is
here, in numpy, so both sides produce and read the same bytes.
"""
from __future__ import annotations

import dataclasses
import itertools
import struct

import numpy as np

from data.image import Image
from edge_runtime import QUALITY_LEVELS
from edge_runtime import bitstream as bs
from edge_runtime import colour as col
from edge_runtime import direct
from edge_runtime import exact_dwt
from edge_runtime import overlap
from edge_runtime import padding as pad
from edge_runtime import raster
from edge_runtime import refine as exact_refine
from edge_runtime import residual as res
from edge_runtime.subband_coder import CodingModel, decode_subbands, encode_subbands
from edge_runtime.threads import single_blas_thread

BASE_QUALITIES = tuple(range(1, 31))
"""Base qualities of error-bounded tiles: the lossy levels and finer ones (up to about 72 dB)."""
SEARCH_START = (14, 20, 26)
SEARCH_SIDE = 256
_STEP_K = np.sqrt(12.0) * 0.75


def nominal_psnr(quality: int) -> float:
    """Quality q aims at about 12 + 2q dB PSNR over the plane's dynamic range (smooth images get more)."""
    if quality not in BASE_QUALITIES:
        raise ValueError(f"quality must be in {QUALITY_LEVELS[0]}..{QUALITY_LEVELS[-1]}, got {quality}")
    return 12.0 + 2.0 * quality


# √12·0.75·10^(−(12+2q)/20) for q = 1..30, written out bit for bit: a libm `pow` may round
# differently on another CPU, and the error-bounded mode needs the same base on every decoder.
_STEPS = tuple(float.fromhex(h) for h in (
    '0x1.0969ac9c0f6e6p-1', '0x1.a5a655c123504p-2', '0x1.4eeda4f717a87p-2',
    '0x1.0a0b02501c79ap-2', '0x1.a6a6a3f8fe48ap-3', '0x1.4fb93c30f996cp-3',
    '0x1.0aacba15f707ap-3', '0x1.a7a78dfd583b6p-4', '0x1.50854f2c3d223p-4',
    '0x1.0b4ed4293c000p-4', '0x1.a8a9142ce57d6p-5', '0x1.5151de341c403p-5',
    '0x1.0bf150c5ac86cp-5', '0x1.a9ab36e693f5cp-6', '0x1.521ee993fea08p-6',
    '0x1.0c9430272e121p-6', '0x1.aaadf6898b3fbp-7', '0x1.52ec719779c91p-7',
    '0x1.0d377289ca81cp-7', '0x1.abb153752cccdp-8', '0x1.53ba768a5130fp-8',
    '0x1.0ddb1829b0338p-8', '0x1.acb54e09140adp-9', '0x1.5488f8b8765e3p-9',
    '0x1.0e7f2143321a0p-9', '0x1.adb9e6a516835p-10', '0x1.5557f86e08ffdp-10',
    '0x1.0f238e12c7d41p-10', '0x1.aebf1da94402dp-11', '0x1.562775f7570a4p-11',
))


def quantizer_step(quality: int) -> float:
    """Quantizer step in normalized units ([0, 1] = the plane's dynamic range): √12·0.75·10^(−PSNR/20)."""
    nominal_psnr(quality)  # validates
    return _STEPS[quality - 1]


def levels_for(rows: int, cols: int, max_levels: int) -> int:
    """As deep as keeps the coarsest band at least about 8 samples on its short side: floor(log2(n / 8)) of the short
    side n, from its bit length (exact: no libm's log2 decides the geometry)."""
    return int(max(1, min(max_levels, max(int(min(rows, cols)), 2).bit_length() - 4)))


def padded_shape(rows: int, cols: int, levels: int) -> tuple[int, int]:
    m = 1 << levels
    return -(-rows // m) * m, -(-cols // m) * m


def pad_plane(x: np.ndarray, levels: int) -> np.ndarray:
    """Mirror-pad a plane at the bottom and right to a multiple of 2**levels, as float32."""
    pr, pc = padded_shape(*x.shape, levels)
    return np.pad(x, ((0, pr - x.shape[0]), (0, pc - x.shape[1])), mode="symmetric").astype(np.float32)


STEP_SCALE_BITS = 16
"""Step multipliers are dyadic rationals k / 2**STEP_SCALE_BITS (see level_step_scales)."""


def dyadic_scale(m: float) -> float:
    """m rounded to a multiple of 2**-STEP_SCALE_BITS: exact in binary, the same double on every machine."""
    m = float(m)
    if not np.isfinite(m) or m <= 0:
        raise ValueError(f"a step multiplier must be a finite number > 0, got {m}")
    return max(round(m * (1 << STEP_SCALE_BITS)), 1) / float(1 << STEP_SCALE_BITS)


def level_step_scales(params: dict, levels: int) -> list:
    """Per-band step multipliers of a plane with `levels` levels, in band order [LL, level L, ..., level 1].

    The bundle's optional codec param "level_step_scale" is a list indexed by level number:
    entry 0 for the LL band (whatever the depth), entry i for the detail bands (H, V, D) of
    level i, finest = 1. A shallow plane (a small tile, see levels_for) uses entries 0 and
    1..L; a missing entry or a missing key is 1.0, which leaves the codec exactly as without
    multipliers (step · 1.0 = step). Each multiplier m is rounded to a dyadic rational
    (dyadic_scale); the band step is then quantizer_step(q) · m, one correctly rounded IEEE
    product, so the decoder (TFLite and the exact float64 path the error-bounded mode relies
    on) dequantizes to the same floats on every CPU.
    """
    table = params.get("level_step_scale") or []
    if not isinstance(table, (list, tuple)):
        raise ValueError(f"codec param level_step_scale must be a list of numbers, got {table!r}")
    m = [dyadic_scale(v) for v in table]
    at = lambda i: m[i] if i < len(m) else 1.0
    return [at(0)] + [at(lv) for lv in range(levels, 0, -1)]


def quantize_bands(bands: list, step: float, deadzone: float, scales=None) -> tuple[list, list]:
    """Wavelet bands -> (bands in quantizer steps, integer bands): LL rounded, details deadzone-quantized.

    `scales` (optional, from level_step_scales): per-band step multipliers, [LL, coarse..fine];
    band i is quantized with step · scales[i], and its "bands in quantizer steps" are in units of that step.
    """
    steps = [step * s for s in scales] if scales is not None else [step] * len(bands)
    if len(steps) != len(bands):
        raise ValueError(f"{len(steps)} step multipliers for {len(bands)} bands")
    scaled = [bands[0] / steps[0]] + [tuple(b / st for b in trio) for trio, st in zip(bands[1:], steps[1:])]
    q = [np.round(scaled[0]).astype(np.int64)] + [tuple(deadzone_quantize(b, deadzone) for b in trio)
                                                  for trio in scaled[1:]]
    return scaled, q


def deadzone_quantize(x: np.ndarray, deadzone: float) -> np.ndarray:
    """sign(x)·floor(|x| + 0.5 − deadzone): rounding with a widened zero bin."""
    return (np.sign(x) * np.floor(np.abs(x) + 0.5 - deadzone)).astype(np.int64)


def dequantize(q: np.ndarray, bias: float) -> np.ndarray:
    return np.sign(q) * (np.abs(q) + bias)


def _band_shapes(rows: int, cols: int, levels: int) -> list:
    shapes = [(rows >> levels, cols >> levels)]
    for lv in range(levels, 0, -1):
        s = (rows >> lv, cols >> lv)
        shapes.append((s, s, s))
    return shapes


class PlaneCoder:
    """Codes one normalized 2-D plane (a tile) at a quality level.

    `transforms` maps a wavelet name to an object with `analysis(plane, levels)` and
    `synthesis(bands, levels)`. When the bundle lists several (`params["transforms"]`),
    the encoder codes the tile with each and keeps the one with the lower
    rate-distortion cost D/step² + λ·bits (CDF 9/7 wins on natural images, Haar on
    piecewise-constant test patterns and graphics). Alternatives to the first transform
    are tried only on tiles where at least `transform_gate` of the neighbouring pixel
    pairs are equal (flat, synthetic content), which spares natural images the second
    encode. A tile stream is one byte (the transform's position in that list) followed
    by the subband stream.

    Error-bounded tiles (`encode_bounded`, max error D >= 0, D = 0 lossless) are a base
    tile stream plus the residual (edge_runtime.residual) against the base as
    `decode_exact` reconstructs it: numpy float64 lifting (with the bundle's learned lifting
    refinement, `refine`, as an integer network) without the post-filter, the same bits on
    every CPU. Their stream is: uint8 base quality, uint32 divisor g, uint32
    base length (little-endian); when g = 0 (lossless tiles coded as indices into a table
    of their values) uint32 count and count int32 values, increasing; then the base tile
    stream and the residual's range-coded words. The quality byte's high bit (ADAPTIVE)
    says the residual is the adaptive stream (res.encode_residual_adaptive: tables chosen
    for the tile per context bucket) rather than the fixed-table one of earlier releases
    (res.encode_residual), which still decodes; `adaptive=False` writes the older stream.
    Its next bit (SHAPES, only with ADAPTIVE) says buckets may also use the lighter-tailed
    tables (res.shape_tables); the encoder sets both, and streams with ADAPTIVE alone decode.
    The bit after (LOSSLESS) says a tile of a plane coded with a max error D > 0 is coded
    losslessly (its own bound 0, value tables allowed): graphics, test patterns and screen
    captures are often smaller that way than near-losslessly. Base quality 0 (base length 0)
    says the tile has no base: its values (or value-table indices) are coded by
    edge_runtime.direct (version 1) with the tile's bound, after the header and the value table;
    quality DIRECT_ACTIVITY likewise, by direct's version 2 (ACTIVITY_VERSION: every pass sends
    its contexts' activity measure) when the base length field is 0, or by its version 3
    (HALVES_VERSION: the last edges pass in two halves) when that field is 3; the encoder writes
    both (HALVES_TRIAL_PIXELS, HALVES_GATE). A decoder that predates version 3 refuses its tiles (a base length
    without a base). With the field RASTER_FIELD the tile is coded losslessly by edge_runtime.raster (its bound
    is 0: a plane's max error 0, or the LOSSLESS flag): the encoder tries it for tiles with at least RASTER_GATE
    of their adjacent pairs equal; decoders that predate it refuse the tile likewise.
    """

    ADAPTIVE = 0x80
    """Flag in an error-bounded tile's quality byte: the residual is res.encode_residual_adaptive's."""
    SHAPES = 0x40
    """Flag beside ADAPTIVE: the adaptive residual may use res.shape_tables (shapes=True)."""
    LOSSLESS = 0x20
    """Flag: the tile is coded losslessly although its plane's max error is above 0."""
    DIRECT_ACTIVITY = 31
    """The quality of a tile without a base coded by edge_runtime.direct's version 2 (ACTIVITY_VERSION); not a
    base quality (BASE_QUALITIES), so a decoder that predates it refuses the tile."""
    LOSSLESS_GATE = 0.7
    """With a max error above 0, tiles with at least this share of equal adjacent pixel pairs (graphics,
    test patterns, flat backgrounds) are also coded losslessly, and the shorter stream kept."""
    DIRECT_VERSION_FIELD = {direct.ACTIVITY_VERSION: 0, direct.HALVES_VERSION: direct.HALVES_VERSION}
    """The base length field of a DIRECT_ACTIVITY tile (it has no base) for each version of edge_runtime.direct."""
    RASTER_FIELD = 4
    """The base length field of a DIRECT_ACTIVITY tile coded by edge_runtime.raster (lossless, raster order)."""
    RASTER_GATE = 0.7
    """Tiles with at least this share of equal adjacent pixel pairs (graphics, test patterns) are also coded by
    edge_runtime.raster, and the shorter stream kept (as LOSSLESS_GATE: a CT or MR is far below it)."""
    HALVES_GATE = 0.5
    HALVES_TRIAL_PIXELS = 1 << 16
    """Tiles without a base of at most HALVES_TRIAL_PIXELS pixels are coded by both direct's HALVES_VERSION and its
    version 2, and the shorter kept (a second encode of a small tile: a few tens of ms). Larger ones by version 3
    when less than HALVES_GATE of their adjacent pixel pairs are equal, else by version 2: a third pass at step 1
    sends its own tables, which a mostly flat tile does not repay. On the train split (D = 0, 2, 4): a 1024x1024 MR
    and a 128x128 CT 1.6-3.1 % smaller in version 3, a 512x512 CT with a flat background (0.35 of its pairs equal)
    within 0.2 %; larger: 64x64 MR 0.9-1.5 %, ultrasound with its black surround (0.54-0.59) up to 1.6 %,
    graphics, test patterns and a mostly flat CT (0.73 and more) 0.2-1.3 %."""
    SEARCH_STEPS = (3,)
    """Refinement steps of search_base_quality after SEARCH_START."""
    BASE_MIN_PIXELS = 1 << 19
    """With no base quality given, error-bounded tiles of at most this many pixels are coded without a base only
    (as with quality 0): on every image and volume slice of the corpus up to 512x512 pixels (CT, MR, ultrasound,
    graphics) the tile without a base was the shorter, at D = 0 and at D = 2, except a 64x64 MR (by 1.4 and
    2.3 %); the base + residual won on larger, smooth radiographs and MR (a 1760x1760 CR by 2.4 %, 1024x1024 MR by
    0.8 %). The base-quality search and the base + residual coding are most of a 512x512 lossless encode."""

    def __init__(self, params: dict, coding: CodingModel, transforms, residual: res.ResidualModel | None = None,
                 refine: exact_refine.ExactRefinement | None = None, adaptive: bool = True, direct: bool = True,
                 max_tile: int | None = None):
        self.p = params
        self.max_tile = max_tile  # the bundle's tile size: its encoders never write larger tiles (check_tiles)
        self.adaptive = bool(adaptive)
        self.direct = bool(direct)  # lossless tiles may also be coded without a base (edge_runtime.direct)
        self.coding = coding
        self.residual = residual
        self.refine = refine
        if not isinstance(transforms, dict):
            transforms = {params.get("wavelet", "cdf97"): transforms}
        self.transforms = transforms
        self.names = [n for n in params.get("transforms", [params.get("wavelet", "cdf97")]) if n in transforms]
        if not self.names:
            raise ValueError(f"none of the bundle's transforms {params.get('transforms')} is available")

    def levels(self, rows: int, cols: int) -> int:
        return levels_for(rows, cols, int(self.p["levels"]))

    def _encode_with(self, name: str, xp: np.ndarray, levels: int, step: float, stats=None, weigh: bool = True,
                     analysed: dict | None = None):
        """(tile stream, its squared error in base step² units (None unless `weigh`), the coded bands).

        `analysed` (optional) keeps the transform's bands of `xp` per transform name, for encodes of the
        same plane at other qualities (search_base_quality)."""
        scales = level_step_scales(self.p, levels)
        bands = None if analysed is None else analysed.get(name)
        if bands is None:
            bands = self.transforms[name].analysis(xp, levels)
            if analysed is not None:
                analysed[name] = bands
        scaled, q = quantize_bands(bands, step, float(self.p["deadzone"]), scales)
        bias = float(self.p["recon_bias"])
        final = []
        # The RDO sees each band in its own step units, so its lambda is per band step²
        # (lambda · m² in units of the base step): the coder takes one lambda for all bands.
        data = encode_subbands(q, self.coding, coeffs=scaled, lam=float(self.p["rdo_lambda"]), bias=bias,
                               rdo_out=final, stats=stats)
        if not weigh:
            return data, None, final
        # Squared error in units of the base step², each band weighted by (its step / base step)²,
        # so that the transform choice in `encode` compares true D + lambda·R.
        w = [s * s for s in scales]
        sse = w[0] * float(((scaled[0] - final[0]) ** 2).sum())
        for wi, xs, qs in zip(w[1:], scaled[1:], final[1:]):
            sse += wi * sum(float(((x - dequantize(qq, bias)) ** 2).sum()) for x, qq in zip(xs, qs))
        return data, sse, final

    def encode(self, x: np.ndarray, quality: int, stats: dict | None = None, transform: str | None = None) -> bytes:
        """Tile stream of plane `x`; `stats` (optional) accumulates "estimated_bits" of what is written.

        `transform` (one of the bundle's) skips the choice: a cine's later frames reuse their first
        frame's (encode_image)."""
        return self._encode(x, quality, stats, transform)[0]

    def _encode(self, x: np.ndarray, quality: int, stats: dict | None, transform: str | None,
                analysed: dict | None = None):
        """(tile stream, transform, levels, the integer bands it codes: what its decoder will have);
        `analysed` as `_encode_with`'s."""
        levels = self.levels(*x.shape)
        xp = pad_plane(x, levels)
        step = quantizer_step(quality)
        lam = float(self.p["rdo_lambda"])
        names = self.names
        if transform is not None:
            if transform not in names:
                raise ValueError(f"transform {transform!r} is not one of the bundle's {names}")
            names = [transform]
        elif len(names) > 1 and _equal_pair_fraction(x) < float(self.p.get("transform_gate", 0.5)):
            names = names[:1]
        best = None
        for name in names:
            st = {} if stats is not None else None
            data, sse, final = self._encode_with(name, xp, levels, step, st, weigh=len(names) > 1,
                                                 analysed=analysed)
            cost = sse + lam * 8 * len(data) if sse is not None else 0.0
            if best is None or cost < best[0]:
                best = (cost, bytes([self.names.index(name)]) + data, st, name, final)
        if stats is not None:
            stats["estimated_bits"] = stats.get("estimated_bits", 0.0) + 8 + best[2]["estimated_bits"]
        return best[1], best[3], levels, best[4]

    @classmethod
    def without_base(cls, stream: bytes) -> bool:
        """Whether an error-bounded tile stream (from `encode_bounded`) is coded without a base (base quality 0 or
        DIRECT_ACTIVITY, edge_runtime.direct)."""
        return len(stream) > 0 and stream[0] & ~(cls.ADAPTIVE | cls.SHAPES | cls.LOSSLESS) in (0, cls.DIRECT_ACTIVITY)

    def tile_transform(self, stream: bytes, bounded: bool) -> str | None:
        """The transform a tile stream (from `encode`, or `encode_bounded` when `bounded`) was coded with
        (None: an error-bounded tile without a base)."""
        if bounded:
            if self.without_base(stream):
                return None
            g = struct.unpack_from("<BII", stream, 0)[1]
            off = 13 + 4 * struct.unpack_from("<I", stream, 9)[0] if g == 0 else 9
            stream = stream[off:]
        return self.names[stream[0]]

    def _decode_bands(self, data: bytes, rows: int, cols: int, quality: int):
        if len(data) < 1 or data[0] >= len(self.names):
            raise ValueError("tile stream names an unknown transform")
        levels = self.levels(rows, cols)
        pr, pc = padded_shape(rows, cols, levels)
        q = decode_subbands(data[1:], _band_shapes(pr, pc, levels), self.coding)
        return (self.names[data[0]], levels) + self._dequantize(q, levels, quality)

    def _dequantize(self, q: list, levels: int, quality: int) -> tuple[list, float]:
        """(dequantized float32 bands, step) of integer bands q, as every decoder computes them."""
        level = self._level_dequantizer(levels, quality)
        return [level(i, b) for i, b in enumerate(q)], quantizer_step(quality)

    def _level_dequantizer(self, levels: int, quality: int):
        """f(i, bands) -> the float32 dequantized LL (i = 0) or (H, V, D) of level i (1 = coarsest) of integer
        bands: the one rule of _dequantize, for a decoder that takes the levels as they come."""
        bias = float(self.p["recon_bias"])
        # One band step per band (step · m, an exactly rounded double): the same floats on every CPU.
        steps = [quantizer_step(quality) * m for m in level_step_scales(self.p, levels)]

        def level(i: int, bands):
            if i == 0:
                return bands.astype(np.float32) * steps[0]
            return tuple((dequantize(b, bias) * steps[i]).astype(np.float32) for b in bands)

        return level

    def decode(self, data: bytes, rows: int, cols: int, quality: int) -> np.ndarray:
        t = self.transforms[self.names[data[0]]] if len(data) and data[0] < len(self.names) else None
        if getattr(t, "refine", None) is not None and hasattr(t, "refined_output"):
            return self._decode_refined(data, rows, cols, quality, t)
        name, levels, bands, step = self._decode_bands(data, rows, cols, quality)
        y = self.transforms[name].synthesis(bands, levels, step=step)
        return y[:rows, :cols]

    def _decode_refined(self, data: bytes, rows: int, cols: int, quality: int, t) -> np.ndarray:
        """`decode` through the refined inverse, level by level as the bands decode: each level's prediction
        starts as soon as its low band is complete, on a helper process where there is one (edge_runtime.overlap),
        while the level's own bands decode. The same floats as _decode_bands then t.synthesis."""
        levels = self.levels(rows, cols)
        pr, pc = padded_shape(rows, cols, levels)
        dequantized = self._level_dequantizer(levels, quality)
        state = {}

        def on_level(i: int, bands) -> None:
            if i == 0:
                x = np.asarray(dequantized(0, bands), np.float64)
            else:
                x = exact_refine.level_synthesis(state["x"], dequantized(i, bands), state["pred"].result(),
                                                 t.wavelet, t.mode)
            state["x"] = x
            if i < levels:
                state["pred"] = predict(x, levels - i)

        with overlap.predictor(t.refine, pr * pc) as predict:
            decode_subbands(data[1:], _band_shapes(pr, pc, levels), self.coding, on_level)
        return t.refined_output(state["x"], quantizer_step(quality))[:rows, :cols]

    def decode_exact(self, data: bytes, rows: int, cols: int, quality: int) -> np.ndarray:
        """The plane without the post-filter, through the float64 numpy lifting: bit-reproducible."""
        name, levels, bands, _step = self._decode_bands(data, rows, cols, quality)
        return self._exact_synthesis(name, levels, bands)[:rows, :cols]

    def _exact_synthesis(self, name: str, levels: int, bands: list) -> np.ndarray:
        mode = self.p.get("mode", "symmetric")
        if self.refine is not None and name == self.refine.wavelet:
            y = exact_refine.synthesis(bands, levels, self.refine, name, mode)
        else:
            y = exact_dwt.synthesis(bands, levels, name, mode)
        return y

    def _residual_model(self) -> res.ResidualModel:
        if self.residual is None:
            raise ValueError("this model bundle has no residual model (residual.npz), so it cannot code with "
                             "a max error or losslessly; use a bundle made by keras-codec train")
        return self.residual

    def encode_bounded(self, x: np.ndarray, lo: int, hi: int, max_error: int, quality: int | None = None,
                       stats: dict | None = None, transform: str | None = None) -> bytes:
        """Tile stream of integer tile `x` (values in [lo, hi]) within `max_error` of it.

        Values are first divided by the greatest common divisor g of x - lo (8-bit data
        stored in 16 bits, palettes: g = 256 or 257), with the bound D // g. Lossless tiles
        that use at most half of the values in their range (graphics, test patterns) are
        also coded as indices into a table of the values present. Tiles are also coded without
        a base (edge_runtime.direct: quality byte DIRECT_ACTIVITY). The shortest is kept.
        The base quality is `quality`, or with None the one search_base_quality finds (none for tiles of at most
        BASE_MIN_PIXELS pixels); quality 0 codes the tile without a base only (the fast encode: no base-quality
        search, no base). Tiles of more than direct.MAX_PIXELS pixels always have a base (quality 0 then searches it).
        """
        if quality == 0 and not self.direct:
            raise ValueError("base quality 0 codes tiles without a base, which this coder does not")
        direct_ok = self.direct and np.size(x) <= direct.MAX_PIXELS
        if not np.size(x):
            quality = None  # nothing to code: the base path's empty tile
        elif quality == 0 and not direct_ok:
            quality = None
        elif quality is None and direct_ok and np.size(x) <= self.BASE_MIN_PIXELS:
            quality = 0
        x = np.asarray(x, np.int64)
        g = max(int(np.gcd.reduce((x - lo).ravel())), 1) if x.size else 1
        flags = self.ADAPTIVE | self.SHAPES if self.adaptive else 0
        u = (x - lo) // g
        candidates = [(g, u, (hi - lo) // g, int(max_error) // g, b"", flags)]
        lossless = flags if max_error == 0 else None
        flat = _equal_pair_fraction(x) if x.size else 0.0
        if max_error > 0 and x.size and flat >= self.LOSSLESS_GATE:
            lossless = flags | self.LOSSLESS
            candidates.append((g, u, (hi - lo) // g, 0, b"", lossless))
        if lossless is not None and x.size:
            values, index = _values_present(x, lo, hi)
            if len(values) <= ((hi - lo) // g + 1) // 2:
                table = struct.pack("<I", len(values)) + values.astype("<i4").tobytes()
                candidates.append((0, index.reshape(x.shape), len(values) - 1, 0, table, lossless))
        best = None
        checks, kept_body = [], None  # direct.LosslessCheck of the lossless tiles without a base; the kept one's body

        def without_base(candidate, field: int, body: bytes) -> None:  # keep the tile if it is the shortest so far
            nonlocal best, kept_body
            div, _v, _top, _d, table, fl = candidate
            if best is None or 9 + len(table) + len(body) < len(best[0]):
                best = (struct.pack("<BII", self.DIRECT_ACTIVITY | fl & self.LOSSLESS, div, field) + table + body,
                        {"estimated_bits": 8.0 * len(body)}, len(table))
                kept_body = body

        if x.size and direct_ok:  # without a base: the plane's own bound, and the last lossless candidate
            if x.size <= self.HALVES_TRIAL_PIXELS:  # small: both versions, the shorter kept
                versions = (direct.HALVES_VERSION, direct.ACTIVITY_VERSION)
            else:
                versions = (direct.HALVES_VERSION if flat < self.HALVES_GATE else direct.ACTIVITY_VERSION,)
            for candidate in candidates[:1] + candidates[1:][-1:]:
                _div, v, top, d, _table, _fl = candidate
                for version in versions:
                    without_base(candidate, self.DIRECT_VERSION_FIELD[version],
                                 self._direct_body(v, top, d, version, checks))
            exact = [c for c in candidates if c[3] == 0]  # lossless: a max error of 0, or the LOSSLESS candidate
            if exact and flat >= self.RASTER_GATE and x.size <= raster.MAX_PIXELS:  # graphics: also in raster order
                without_base(exact[0], self.RASTER_FIELD, raster.encode(exact[0][1], self._residual_model().tables))
        for div, v, top, d, table, fl in candidates if quality != 0 else ():
            q = self.search_base_quality(v, top, d, transform) if quality is None else quality
            st = {} if stats is not None else None
            base_stream, body = self._bounded_body(v, top, d, q, st, transform)
            data = struct.pack("<BII", q | fl, div, len(base_stream)) + table + base_stream + body
            if best is None or len(data) < len(best[0]):
                best, kept_body = (data, st, len(table)), None
        for check in checks:  # the kept lossless body's check, for its next decode (cheaper than decoding it)
            if check.data is kept_body:
                check.register()
        if stats is not None:
            stats["estimated_bits"] = stats.get("estimated_bits", 0.0) + 72 + 8 * best[2] + best[1]["estimated_bits"]
        return best[0]

    def _direct_body(self, v: np.ndarray, top: int, d: int, version: int, checks: list | None = None) -> bytes:
        """direct.encode of tile v; losslessly with its pass choices made on a helper process when the process has
        one (edge_runtime.overlap): the same bytes. `checks`: direct.encode's (lossless)."""
        tables = self._residual_model().tables
        if d:
            return direct.encode(v, tables, d, top, version=version)
        with overlap.lossless_choices(v, top, version) as choices:
            return direct.encode(v, tables, 0, top, version=version, choices=choices, checks=checks)

    def exact_base(self, u: np.ndarray, top: int, quality: int, stats=None, transform: str | None = None,
                   analysed: dict | None = None) -> tuple[bytes, np.ndarray]:
        """Base tile stream of integer tile u in [0, top] at `quality`, and the base as every decoder rebuilds it
        (`analysed`: see `_encode_with`)."""
        base_stream, name, levels, q = self._encode(u / float(max(top, 1)), quality, stats, transform, analysed)
        # the encoder holds the integer bands its stream codes: no need to entropy-decode them again
        y = self._exact_synthesis(name, levels, self._dequantize(q, levels, quality)[0])
        return base_stream, res.reconstruct_base(y[:u.shape[0], :u.shape[1]], 0, top)

    def _bounded_body(self, u: np.ndarray, top: int, d: int, quality: int, stats=None,
                      transform: str | None = None) -> tuple[bytes, bytes]:
        """(base tile stream, residual stream) of integer tile u in [0, top] within d."""
        model = self._residual_model()
        base_stream, base = self.exact_base(u, top, quality, stats, transform)
        e = res.quantize(u - base, d)
        if self.adaptive:
            return base_stream, res.encode_residual_adaptive(e, base, d, model, stats=stats, shapes=True)
        return base_stream, res.encode_residual(e, base, d, model, stats=stats)

    def search_base_quality(self, u: np.ndarray, top: int, d: int, transform: str | None = None) -> int:
        """The base quality giving the shortest stream, on a central crop of at most SEARCH_SIDE².

        Coarse to fine over BASE_QUALITIES: SEARCH_START, then ±SEARCH_STEPS around the best so
        far (the size is close to unimodal in the quality), then one trial at the vertex of the
        parabola through the best and its nearest tried neighbours: at most 6 trial encodes.
        """
        r0, c0 = max(0, (u.shape[0] - SEARCH_SIDE) // 2), max(0, (u.shape[1] - SEARCH_SIDE) // 2)
        crop = u[r0:r0 + SEARCH_SIDE, c0:c0 + SEARCH_SIDE]
        sizes = {}
        analysed = {}  # the crop's transform, computed once for every trial

        def trial(q):
            if not self.adaptive:
                return sum(map(len, self._bounded_body(crop, top, d, q, None, transform)))
            # the adaptive residual's size as its encoder estimates it (no range coding in the trials), without
            # the lighter-tailed tables (twice the tables to weigh)
            base_stream, base = self.exact_base(crop, top, q, None, transform, analysed)
            bits = res.adaptive_plan(res.quantize(crop - base, d), base, d, self._residual_model())[0]
            return len(base_stream) + int(np.ceil(bits / 8))

        def size(q):
            if q not in sizes:
                sizes[q] = trial(q) if q in BASE_QUALITIES else np.inf
            return sizes[q]

        best = min(SEARCH_START, key=size)
        for delta in self.SEARCH_STEPS:
            best = min((best - delta, best, best + delta), key=size)
        # one more trial at the vertex of the parabola through the best and its nearest tried neighbours
        # (beyond them when the best is at the edge of what was tried), at most h - 1 away
        h = self.SEARCH_STEPS[-1]
        tried = sorted(q for q, v in sizes.items() if np.isfinite(v))
        if h > 1 and len(tried) >= 3:
            i = min(max(tried.index(best), 1), len(tried) - 2)
            qs = np.array(tried[i - 1:i + 2], np.float64)
            a, b_, _c = np.polyfit(qs, [float(sizes[q]) for q in tried[i - 1:i + 2]], 2)
            if a > 0:
                step = int(np.clip(np.round(-b_ / (2 * a) - best), 1 - h, h - 1))
                if step:
                    best = min((best, best + step), key=size)
        return best

    def decode_bounded(self, data: bytes, rows: int, cols: int, lo: int, hi: int, max_error: int) -> np.ndarray:
        """Inverse of encode_bounded: the integer tile, every pixel within `max_error` of the original."""
        model = self._residual_model()
        if len(data) < 9:
            raise ValueError("error-bounded tile stream shorter than its 9-byte header")
        q, g, n = struct.unpack_from("<BII", data, 0)
        adaptive, shapes, lossless = bool(q & self.ADAPTIVE), bool(q & self.SHAPES), bool(q & self.LOSSLESS)
        q &= ~(self.ADAPTIVE | self.SHAPES | self.LOSSLESS)
        if shapes and not adaptive:
            raise ValueError("error-bounded tile header is inconsistent: it flags lighter-tailed tables without the "
                             "adaptive residual")
        if lossless:  # a lossless tile in a plane with a max error: its own bound is 0
            max_error = 0
        off, values = 9, None
        if g == 0:  # indices into a table of values (lossless tiles only)
            count = struct.unpack_from("<I", data, 9)[0] if len(data) >= 13 else 0
            if max_error != 0 or not 1 <= count <= max(hi - lo + 1, 1) or 13 + 4 * count > len(data):
                raise ValueError(f"error-bounded tile value table ({count} values, max error {max_error}) is "
                                 "inconsistent")
            values = np.frombuffer(data, "<i4", count, 13).astype(np.int64)
            if values[0] < lo or values[-1] > hi or np.any(np.diff(values) <= 0):
                raise ValueError("error-bounded tile value table is not increasing within the plane's range")
            off, top, d = 13 + 4 * count, count - 1, 0
        elif g <= max(hi - lo, 1):
            top, d = (hi - lo) // g, int(max_error) // g
        else:
            raise ValueError(f"error-bounded tile divisor {g} exceeds the plane's range {hi - lo}")
        if q == self.DIRECT_ACTIVITY and n == self.RASTER_FIELD:  # lossless, in raster order
            if d != 0 or rows * cols > raster.MAX_PIXELS:
                raise ValueError(f"error-bounded tile header is inconsistent: a {rows}x{cols} raster tile with max "
                                 f"error {d} (raster tiles are lossless, of at most {raster.MAX_PIXELS} "
                                 "pixels)")
            u = raster.decode(data[off:], rows, cols, top, model.tables)
            return values[u] if values is not None else lo + g * u
        if q in (0, self.DIRECT_ACTIVITY):  # no base: edge_runtime.direct, version 1, 2 or 3 (the base length field)
            versions = {0: 1} if q == 0 else {f: v for v, f in self.DIRECT_VERSION_FIELD.items()}
            if n not in versions:
                raise ValueError(f"error-bounded tile header (no base, base length {n}) is inconsistent")
            version = versions[n]
            if version > 1 and rows * cols > direct.MAX_PIXELS:
                raise ValueError(f"error-bounded tile header is inconsistent: a {rows}x{cols} tile without a base "
                                 f"(direct tiles have at most {direct.MAX_PIXELS} pixels)")
            u = direct.decode(data[off:], rows, cols, top, model.tables, d, version)
            return values[u] if values is not None else lo + g * u
        if q not in BASE_QUALITIES or n > len(data) - off:
            raise ValueError(f"error-bounded tile header (quality {q}, divisor {g}, base length {n}) is inconsistent")
        base = res.reconstruct_base(self.decode_exact(data[off:off + n], rows, cols, q), 0, top)
        if adaptive:
            e = res.decode_residual_adaptive(data[off + n:], base, d, model, shapes=shapes)
        else:
            e = res.decode_residual(data[off + n:], base, d, model)
        u = res.dequantize(base, e, d, 0, top)
        return values[u] if values is not None else lo + g * u


def _values_present(x: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(x, return_inverse=True) of integer tile x within [lo, hi]: by counting when the range is not much
    wider than the tile (no sort), else by np.unique."""
    if hi - lo < max(4 * x.size, 1 << 16):
        z = (x - lo).ravel()
        present = np.bincount(z, minlength=hi - lo + 1) > 0
        return np.flatnonzero(present) + lo, (np.cumsum(present) - 1)[z]
    return np.unique(x, return_inverse=True)


def _colour_graphics(image: Image) -> bool:
    """Whether a colour image coded with a max error is also coded losslessly (encode_image): a single frame with at
    least PlaneCoder.LOSSLESS_GATE of its adjacent pixels equal."""
    return image.frames == 1 and _equal_pair_fraction(np.asarray(image.pixels[0])) >= PlaneCoder.LOSSLESS_GATE


def _equal_pair_fraction(x: np.ndarray) -> float:
    """Share of horizontally and vertically adjacent pixel pairs with identical values (of a (rows, cols, samples)
    array: identical in every sample)."""
    h = x[:, 1:] == x[:, :-1]
    v = x[1:, :] == x[:-1, :]
    if x.ndim == 3:
        h, v = h.all(axis=-1), v.all(axis=-1)
    n = h.size + v.size
    return float(h.sum() + v.sum()) / n if n else 0.0


@single_blas_thread()
def encode_plane(plane: np.ndarray, *, coder: PlaneCoder, quality: int | None, max_error: int | None,
                 tile: int, stats: dict | None = None, transforms: list | None = None,
                 norm: tuple | None = None) -> tuple[tuple[int, int], list]:
    """One 2-D plane of stored values -> ((lo, hi), its tile streams): the unit of work of encode_image.

    `transforms` (optional): the transform of each tile, instead of the coder's choice. `norm`
    (optional, lossy): the (lo, hi) that [0, 1] maps to instead of the plane's min and max
    (a wider range: a chroma plane quantized with a step set by its luma, edge_runtime.colour)."""
    lo, hi = (int(plane.min()), int(plane.max())) if norm is None else (int(norm[0]), int(norm[1]))
    scale = float(max(hi - lo, 1))
    streams = []
    for i, (r0, r1, c0, c1) in enumerate(bs.tile_grid(plane.shape[0], plane.shape[1], tile, tile)):
        transform = transforms[i] if transforms is not None else None
        if max_error is not None:
            streams.append(coder.encode_bounded(plane[r0:r1, c0:c1], lo, hi, int(max_error), quality, stats,
                                                transform))
        else:
            x = (plane[r0:r1, c0:c1].astype(np.float64) - lo) / scale
            streams.append(coder.encode(x, quality, stats=stats, transform=transform))
    return (lo, hi), streams


def encode_image(image: Image, *, coder: PlaneCoder, model_id: bytes, quality: int | None,
                 tile: int = 2048, metadata: bytes | None = None, stats: dict | None = None,
                 max_error: int | None = None, plane_map=None, colour: bool = True, series: bool = False,
                 inter: bool = True, group: int | None = None, padding: tuple | None = None) -> bytes:
    """Image -> .kcd bytes (every frame and sample plane, tile by tile).

    `padding` (optional, one-sample images, lossy or max error D > 0): (Pixel Padding Value, Range Limit
    or the value again) in stored units; the pixels within it are carried in a map and decode exactly
    (edge_runtime.padding), and the planes are coded with those pixels filled in smoothly.

    `max_error` D (stored units, >= 0) codes every tile within D of the original (D = 0:
    lossless); its base quality is `quality`, or with None the one the encoder finds
    best for each tile of more than PlaneCoder.BASE_MIN_PIXELS pixels (search_base_quality; smaller tiles
    have none), or with 0 none: every tile is coded
    without a base (edge_runtime.direct; the fast encode, the same format). `stats` (optional) receives
    "estimated_bits": the model's code length of the tile streams, to compare with the real size.
    `plane_map` (optional, e.g. runtime.PlanePool.map) runs encode_plane over the planes in
    worker processes, in order; the stream is the same bytes as without it.

    Frames after the first reuse the transform each tile of the same sample plane chose in the
    first frame (when the bundle offers several): the frames of a loop are alike, and choosing
    costs one encode per transform.

    Unsigned RGB images go through a colour transform (edge_runtime.colour: the RCT when lossy or
    lossless, the green difference with a max error; grey frames as one plane) unless `colour`
    is False, which codes R, G and B as independent planes (the stream of earlier releases). With a
    max error, a single colour frame with at least PlaneCoder.LOSSLESS_GATE of its adjacent pixels
    equal (graphics, a palette ultrasound) is also coded losslessly and the shorter stream kept (the
    header then says max error 0: the decode is exact).

    A multi-frame image is coded in groups of `group` frames (default DEFAULT_GROUP; container
    version 2, edge_runtime.bitstream): each frame after a group's first is coded as the difference
    from the previous frame as decoded when that pays (encode_group), and `plane_map` then runs over
    the groups. `inter=False` codes every frame on its own (version 1, the stream of earlier releases);
    single frames are version 1 unless `series` (the frames are a series' slices, flag bit 4 of
    version 2; `metadata` holds their packed DICOM headers, edge_runtime.series; with `inter=False`
    every slice is then a group of its own).
    """
    bounded = max_error is not None
    if bounded and (int(max_error) != max_error or max_error < 0):
        raise ValueError(f"max error must be an integer >= 0, got {max_error}")
    if not bounded and quality is None:
        raise ValueError("a quality level is needed unless coding with a max error")
    if image.photometric == bs.PALETTE and max_error != 0:
        raise ValueError("PALETTE COLOR indices are labels, not intensities: code them losslessly (max error 0)")
    if padding is not None and (image.samples != 1 or max_error == 0):
        padding = None  # lossless keeps padding as it is
    if int(tile) != tile or not 1 <= tile <= (coder.max_tile or tile):
        raise ValueError(f"tile must be a whole number of pixels from 1 to the bundle's tile size "
                         f"{coder.max_tile}, got {tile!r}: decoders refuse larger tiles (check_tiles)")
    options = dict(quality=quality, max_error=int(max_error) if bounded else None, tile=int(tile))
    if group is not None and (int(group) != group or group < 1):
        raise ValueError(f"group must be a whole number of frames >= 1, got {group!r}")
    if series or (inter and image.frames > 1):
        group = 1 if not inter else DEFAULT_GROUP if group is None else int(group)  # a series without inter: intra
        return _encode_groups(image, coder, options, metadata, model_id, plane_map, colour, series, group, stats,
                              padding)
    writer = pad.MapWriter(padding) if padding is not None else None
    if writer is not None:
        image = dataclasses.replace(image, pixels=_fill_padding(np.asarray(image.pixels), writer))
    fields = _padding_fields(writer)
    if plane_map is None or stats is not None:
        plane_map = lambda fn, items, opts, keyword: (fn(coder=coder, **({"stats": stats} if fn is encode_plane else {}),
                                                         **item, **opts) for item in items)
    if colour and col.applies(image):
        norm, streams, colour_fields = _encode_colour(image, coder, options, plane_map)
        data = _pack_image(image, coder, options, norm, streams, metadata, model_id=model_id, **colour_fields)
        if options["max_error"] and _colour_graphics(image):
            # also losslessly (through the RCT, not the green difference: exact is within any bound), the shorter
            # kept
            exact = dict(options, max_error=0)
            norm, streams, colour_fields = _encode_colour(image, coder, exact, plane_map)
            lossless = _pack_image(image, coder, exact, norm, streams, metadata, model_id=model_id, **colour_fields)
            data = lossless if len(lossless) < len(data) else data
        return data
    first = list(plane_map(encode_plane, ({"plane": image.pixels[0, :, :, s]} for s in range(image.samples)),
                           options, keyword=True))
    chosen = [[coder.tile_transform(t, bounded) for t in tiles] for _, tiles in first]
    rest = ({"plane": image.pixels[f, :, :, s], "transforms": chosen[s]}
            for f in range(1, image.frames) for s in range(image.samples))
    results = itertools.chain(first, plane_map(encode_plane, rest, options, keyword=True))
    norm, streams = [], []
    for lohi, tiles in results:
        norm.append(lohi)
        streams.extend(tiles)
    return _pack_image(image, coder, options, norm, streams, metadata, model_id=model_id, **fields)


def _pack_image(image: Image, coder: PlaneCoder, options: dict, norm: list, streams: list, metadata,
                model_id: bytes, **fields) -> bytes:
    """The stream of coded planes; `fields` are the header's other fields (colour, groups, padding)."""
    bounded, tile = options["max_error"] is not None, options["tile"]
    header = bs.Header(model_id=model_id, rows=image.rows, cols=image.cols, frames=image.frames,
                       samples=image.samples, bits_stored=image.bits_stored, signed=image.signed,
                       dtype=image.pixels.dtype.name, photometric=image.photometric,
                       quality=0 if bounded else options["quality"],
                       max_error=options["max_error"] if bounded else -1,
                       lossless=bounded and options["max_error"] == 0, levels=int(coder.p["levels"]),
                       tile_rows=tile, tile_cols=tile, norm=norm, **fields)
    return bs.pack(header, streams, metadata)


def _encode_groups(image: Image, coder: PlaneCoder, options: dict, metadata, model_id: bytes, plane_map,
                   colour: bool, series: bool, group: int, stats, padding) -> bytes:
    """A version 2 stream: encode_group over the image's groups of frames, in order.

    The frames are taken from `image.pixels` a group at a time (a series' slices are read as they are
    needed: edge_runtime.series.SliceStack), and so is the padding map (`padding`: as in encode_image), so
    memory is bounded by a few groups, not by the frames.
    """
    group = min(group, image.frames)
    transform = col.transform_for(options["max_error"]) if colour and col.applies(image) else bs.COLOUR_NONE
    opts = dict(options, transform=transform, clip=image.value_range)
    writer = pad.MapWriter(padding) if padding is not None else None

    def group_frames(g):
        frames = np.asarray(image.pixels[g:g + group])
        return _fill_padding(frames, writer) if writer is not None else frames

    items = ({"frames": group_frames(g)} for g in range(0, image.frames, group))
    if plane_map is None or stats is not None:
        results = (encode_group(coder=coder, stats=stats, **item, **opts) for item in items)
    else:
        results = plane_map(encode_group, items, opts, keyword=True)
    kinds, modes, norm, streams = [], [], [], []
    for r in results:
        kinds += r["kinds"]
        modes += r["modes"]
        norm += r["norm"]
        streams += r["streams"]
    return _pack_image(image, coder, options, norm, streams, metadata, model_id=model_id, colour=transform,
                       frame_kinds=kinds, group=group, frame_modes=modes, series=bool(series),
                       **_padding_fields(writer))


def _fill_padding(frames: np.ndarray, writer: pad.MapWriter) -> np.ndarray:
    """`frames` as coded: their padding pixels (added to the map `writer` builds) filled in smoothly."""
    mask = pad.mask_of(frames, (writer.lo, writer.hi))
    writer.add(frames, mask)
    return pad.fill(frames, mask) if mask.any() else frames


def _padding_fields(writer) -> dict:
    """The header fields of the padding map `writer` built (none without a writer or a padding pixel)."""
    payload = writer.payload() if writer is not None else None
    return {"padding": writer.padding, "padding_map": payload} if payload else {}


COLOUR_GROUP = 8
"""Frames encoded together with the green difference: their G planes, then (G decoded) their differences."""


def _encode_colour(image: Image, coder: PlaneCoder, options: dict, plane_map) -> tuple[list, list, dict]:
    """(norm, tile streams, header colour fields) of an RGB image through its colour transform.

    Planes of a frame, in stream order: [G] for a grey frame; [Y, Cb, Cr] (RCT) or [G, B - G', R - G']
    (green difference) for a colour frame. As for grey images, frames after the first reuse the tile
    transforms the same plane of the first frame chose (chroma planes absent from a grey first frame
    choose their own); the choice never depends on the plane_map, so neither do the bytes.
    """
    transform = col.transform_for(options["max_error"])
    lossy = options["max_error"] is None
    kinds = [col.frame_kind(image.pixels[f]) for f in range(image.frames)]
    chosen = {}
    bounded = not lossy

    def item(plane, role, norm=None):
        it = {"plane": plane, "transforms": chosen.get(role)}
        if norm is not None:
            it["norm"] = norm
        return it

    def remember(f, results):
        if f == 0:
            for role, (_, tiles) in enumerate(results):
                chosen[role] = [coder.tile_transform(t, bounded) for t in tiles]
        return results

    def rct_items(f):
        frame = image.pixels[f]
        if kinds[f] == bs.FRAME_GREY:
            return [item(frame[:, :, 1], 0)]
        y, cb, cr = col.rct_forward(frame)
        if not lossy:
            return [item(y, 0), item(cb, 1), item(cr, 2)]
        ny = (int(y.min()), int(y.max()))
        return [item(y, 0, ny), item(cb, 1, col.chroma_norm(cb, ny)), item(cr, 2, col.chroma_norm(cr, ny))]

    per_frame = []
    if transform == col.RCT:
        per_frame.append(remember(0, list(plane_map(encode_plane, rct_items(0), options, keyword=True))))
        rest = (it for f in range(1, image.frames) for it in rct_items(f))
        results = iter(plane_map(encode_plane, rest, options, keyword=True))
        per_frame += [[next(results) for _ in range(1 if kinds[f] == bs.FRAME_GREY else 3)]
                      for f in range(1, image.frames)]
    else:
        groups = [[0]] + [list(range(g, min(g + COLOUR_GROUP, image.frames)))
                          for g in range(1, image.frames, COLOUR_GROUP)]
        for group in groups:
            per_frame += _green_difference_group(image, group, kinds, coder, options, plane_map, item, remember)
    norm = [lohi for results in per_frame for lohi, _ in results]
    streams = [t for results in per_frame for _, tiles in results for t in tiles]
    return norm, streams, {"colour": transform, "frame_kinds": kinds}


def _green_difference_group(image: Image, frames: list, kinds: list, coder: PlaneCoder, options: dict, plane_map,
                            item, remember) -> list:
    """Per frame of `frames`, the [(lo, hi), tiles] of G and, in a colour frame, of B - G' and R - G'."""
    px = image.pixels
    greens = list(plane_map(encode_plane, (item(px[f, :, :, 1], 0) for f in frames), options, keyword=True))
    colour_frames = [i for i, f in enumerate(frames) if kinds[f] == bs.FRAME_COLOUR]
    tile = options["tile"]
    decode_options = dict(rows=image.rows, cols=image.cols, tile_rows=tile, tile_cols=tile,
                          clip=image.value_range, quality=0, max_error=options["max_error"], dtype="int32")
    decoded = plane_map(decode_plane, ({"streams": greens[i][1], "lohi": greens[i][0]} for i in colour_frames),
                        decode_options, keyword=True)
    diffs = {}
    for i, g in zip(colour_frames, decoded):
        f = frames[i]
        diffs[i] = [item(px[f, :, :, 2].astype(np.int32) - g, 1), item(px[f, :, :, 0].astype(np.int32) - g, 2)]
    coded = iter(plane_map(encode_plane, (it for i in colour_frames for it in diffs[i]), options, keyword=True))
    out = []
    for i, f in enumerate(frames):
        results = [greens[i]] + ([next(coded), next(coded)] if kinds[f] == bs.FRAME_COLOUR else [])
        out.append(remember(f, results))
    return out


@single_blas_thread()
def decode_plane(streams: list, *, coder: PlaneCoder, rows: int, cols: int, tile_rows: int, tile_cols: int,
                 lohi: tuple, clip: tuple, quality: int, max_error: int, dtype: str, first_tile: int = 0,
                 source=None, span: int | None = None) -> np.ndarray:
    """One plane's tile streams -> the plane (rows, cols) of stored values: the unit of work of decode_image.

    `lohi` is the plane's (lo, hi) from the header, `clip` the stored range; `first_tile` numbers the
    tiles in error messages. InvalidBitstreamError when a tile does not decode. A lossy plane's samples
    are lo + span x its normalized samples (span: hi - lo unless given; a predicted frame's differences
    are normalized by their group's span, see decode_frames).
    """
    lo, hi = lohi
    scale = float(max(hi - lo, 1)) if span is None else float(span)
    lo_c, hi_c = max(lo, clip[0]), min(hi, clip[1])
    out = np.empty((rows, cols), dtype=np.dtype(dtype))
    for i, (r0, r1, c0, c1) in enumerate(bs.tile_grid(rows, cols, tile_rows, tile_cols)):
        try:
            if max_error >= 0:
                v = coder.decode_bounded(streams[i], r1 - r0, c1 - c0, lo_c, hi_c, max_error)
            else:  # lo + scale x the decoded samples, rounded: in place (the same operations, no temporaries)
                v = coder.decode(streams[i], r1 - r0, c1 - c0, quality).astype(np.float64)
                v *= scale
                v += lo
                np.round(v, out=v)
        except (ValueError, AssertionError, IndexError, OverflowError) as exc:
            # constriction reports exhausted or inconsistent coded data with AssertionError
            raise bs.InvalidBitstreamError(source, f"tile {first_tile + i} does not decode "
                                                   f"({exc or type(exc).__name__}); the stream is corrupt") from exc
        except BaseException as exc:  # a Rust panic surfaces as pyo3's PanicException (a BaseException)
            if type(exc).__name__ != "PanicException":
                raise
            raise bs.InvalidBitstreamError(source, f"tile {first_tile + i} does not decode (coder panic: {exc}); "
                                                   "the stream is corrupt") from None
        out[r0:r1, c0:c1] = np.clip(v, lo_c, hi_c)
    return out


def check_tiles(header: bs.Header, coder: PlaneCoder, source=None) -> None:
    """Refuse a stream whose tiles are larger than the coder's bundle codes (PlaneCoder.max_tile): its encoders
    write the bundle's tile size (encode_image refuses a larger `tile`), so the header is corrupt, and such a
    tile could take gigabytes to decode."""
    limit = coder.max_tile
    if limit is not None and max(header.tile_rows, header.tile_cols) > limit:
        raise bs.InvalidBitstreamError(source, f"tiles of {header.tile_rows}x{header.tile_cols}, larger than the "
                                               f"{limit}x{limit} this model's encoders write; the stream is corrupt")


def decode_image(data: bytes, *, coder: PlaneCoder, model_ids=None, source=None,
                 plane_map=None) -> tuple[Image, bs.Header]:
    """.kcd bytes -> Image (stored values, clipped to the stored range).

    `plane_map` (optional, e.g. runtime.PlanePool.map) runs decode_plane over the planes (decode_group
    over the groups of a version 2 stream) in worker processes, in order: the same pixels as without it.
    """
    header, streams, _meta = bs.parse(data, source=source, expected_model_ids=model_ids)
    check_tiles(header, coder, source)
    dtype = np.dtype(header.dtype)
    pixels = np.empty((header.frames, header.rows, header.cols, header.samples), dtype=dtype)
    image = Image(pixels=pixels, bits_stored=header.bits_stored, signed=header.signed,
                  photometric=header.photometric, source=source)
    if header.version == bs.GROUPS_VERSION:
        for first, frames in _group_frames(header, streams, coder, source, plane_map):
            pixels[first:first + len(frames)] = frames
        return image, header
    _decode_frames_v1(header, streams, image, coder, source, plane_map)
    padding = _padding_map(header, source)
    if padding is not None:
        pad.apply(pixels, 0, padding, image.value_range, lossy=not header.error_bounded)
    return image, header


def _padding_map(header: bs.Header, source):
    """The stream's padding map (edge_runtime.padding), or None; InvalidBitstreamError when it is damaged."""
    if header.padding is None:
        return None
    try:
        return pad.unpack(header.padding_map, header.padding, header.frames, header.rows, header.cols)
    except ValueError as exc:
        raise bs.InvalidBitstreamError(source, f"{exc}; the stream is corrupt") from None


def _decode_frames_v1(header: bs.Header, streams: list, image: Image, coder, source, plane_map) -> None:
    """The frames of a version 1 stream into `image.pixels`, plane by plane (decode_plane)."""
    pixels, dtype = image.pixels, image.pixels.dtype
    per_plane = len(bs.tile_grid(header.rows, header.cols, header.tile_rows, header.tile_cols))
    options = dict(rows=header.rows, cols=header.cols, tile_rows=header.tile_rows, tile_cols=header.tile_cols,
                   clip=image.value_range, quality=header.quality,
                   max_error=header.max_error if header.error_bounded else -1, dtype=dtype.name, source=source)
    jobs = ({"streams": streams[p * per_plane:(p + 1) * per_plane], "lohi": tuple(lohi),
             "first_tile": p * per_plane} for p, lohi in enumerate(header.norm))
    if header.colour != bs.COLOUR_NONE:
        # the planes after a frame's first are colour differences: int32, clipped to their own (lo, hi)
        del options["clip"], options["dtype"]
        first = set(itertools.accumulate(header.frame_planes()[:-1], initial=0))
        jobs = ({**job, "clip": image.value_range if p in first else job["lohi"], "dtype": "int32"}
                for p, job in enumerate(jobs))
    if plane_map is None:
        planes = (decode_plane(coder=coder, **job, **options) for job in jobs)
    else:
        planes = plane_map(decode_plane, jobs, options, keyword=True)
    if header.colour != bs.COLOUR_NONE:
        for f, n in enumerate(header.frame_planes()):
            rgb = col.frame_from_planes([next(planes) for _ in range(n)], header.colour, image.value_range)
            pixels[f] = rgb.astype(dtype)
        return
    for p, plane in enumerate(planes):
        f, s = divmod(p, header.samples)
        pixels[f, :, :, s] = plane


# --- frame groups (container version 2) -----------------------------------------------------------

DEFAULT_GROUP = 8
"""Frames per group of a multi-frame stream: a frame decodes after at most this many (random access)."""
_ESTIMATE_LEVELS = 3
ESTIMATE_DOUBT = 0.05
"""A frame after a group's second whose calibrated estimate of predicted / intra cost is within 1 +- this is
coded both ways. Calibrated by the group's second frame, the estimate is within about 10 % of the real
ratio on the cine and the test volumes; a frame that close to break-even gains or loses little either way,
and coding it twice costs encode time."""


def _predictions(prev: np.ndarray, kind: int, transform: int, mode: int) -> list:
    """The prediction of each plane of a frame (int64), from the previous frame as decoded (rows, cols, samples).

    The planes are those the stream codes for the frame's kind (bitstream's module docstring): the
    samples without colour transform; G of a grey frame; Y, Cb, Cr (RCT) or G, B - G, R - G (green
    difference) of a colour frame."""
    prev = np.asarray(prev, np.int64)
    if transform == bs.COLOUR_NONE:
        planes = [prev[:, :, s] for s in range(prev.shape[2])]
    elif kind == bs.FRAME_GREY:
        planes = [prev[:, :, 1]]
    elif transform == bs.COLOUR_RCT:
        planes = list(col.rct_forward(prev))
    else:
        g = prev[:, :, 1]
        planes = [g, prev[:, :, 2] - g, prev[:, :, 0] - g]
    num, den = bs.PREDICTION_WEIGHTS[mode - 1]
    if num == den:
        return [p.astype(np.int64) for p in planes]
    return [(num * p.astype(np.int64) + den // 2) // den for p in planes]


def _holds_samples(i: int, transform: int) -> bool:
    """Whether plane i of a frame holds samples (clipped to the stored range) rather than colour differences."""
    return transform == bs.COLOUR_NONE or i == 0


def _difference_span(i: int, transform: int, first_norm: list) -> int:
    """Normalization span of plane i of a lossy predicted frame: that of the group's first (intra) frame,
    plane 0 (times CHROMA_STEP_RATIO for chroma) with a colour transform, plane i without."""
    if transform == bs.COLOUR_NONE:
        lo, hi = first_norm[i]
        return max(int(hi) - int(lo), 1)
    lo, hi = first_norm[0]
    return max(int(hi) - int(lo), 1) * (1 if i == 0 else col.CHROMA_STEP_RATIO)


def _compact_bands(q: list) -> list:
    """Integer bands [LL, (H, V, D), ...] as int32 when their values fit (half the memory while a group waits
    to rebuild its frames; dequantizing gives the same floats), else as they are."""
    arrays = [q[0]] + [b for trio in q[1:] for b in trio]
    if max(int(np.abs(b).max(initial=0)) for b in arrays) >= 1 << 31:
        return q
    return [q[0].astype(np.int32)] + [tuple(b.astype(np.int32) for b in trio) for trio in q[1:]]


def _assemble(planes: list, transform: int, value_range: tuple) -> np.ndarray:
    """The decoded (rows, cols, samples) int64 frame of its decoded planes."""
    if transform == bs.COLOUR_NONE:
        return np.stack([np.asarray(p, np.int64) for p in planes], axis=-1)
    return col.frame_from_planes(planes, transform, value_range)


def _rate_estimate(plane: np.ndarray, step: float) -> float:
    """A cheap stand-in for the bits of a plane quantized with `step`: sum of log2(1 + |c| / step) over
    the coefficients of a 3-level Haar transform (the encoder's intra / predicted choice, never decoded)."""
    x = np.asarray(plane, np.float64)
    bits = 0.0
    for _ in range(_ESTIMATE_LEVELS):
        r, c = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
        if r == 0 or c == 0:
            break
        x = x[:r, :c]
        a, d = x[0::2] + x[1::2], x[0::2] - x[1::2]
        x = (a[:, 0::2] + a[:, 1::2]) / 4
        for band in (a[:, 0::2] - a[:, 1::2], d[:, 0::2] + d[:, 1::2], d[:, 0::2] - d[:, 1::2]):
            bits += float(np.log2(1.0 + np.abs(band) / (4 * step)).sum())
    return bits + float(np.log2(1.0 + np.abs(x - x.mean()) / step).sum())


class _GroupCodec:
    """What the encoder and decoder of one group share: the planes of a frame, their predictions, spans
    and clipping, so both sides rebuild the same previous frame."""

    def __init__(self, coder: PlaneCoder, *, quality, max_error, tile_rows: int, tile_cols: int, transform: int,
                 clip: tuple, source=None, first_tile: int = 0):
        self.coder, self.quality, self.max_error = coder, quality, max_error
        self.tile_rows, self.tile_cols, self.transform, self.clip = tile_rows, tile_cols, transform, tuple(clip)
        self.lossy = max_error is None or max_error < 0
        self.source, self.next_tile = source, first_tile

    def n_planes(self, kind: int, samples: int) -> int:
        if self.transform == bs.COLOUR_NONE:
            return samples
        return 1 if kind == bs.FRAME_GREY else 3

    def plane_clip(self, i: int, mode: int, lohi: tuple) -> tuple:
        """What decode_plane clips plane i to: the stored range for samples of an intra frame, else (lo, hi)."""
        return self.clip if mode == bs.FRAME_INTRA and _holds_samples(i, self.transform) else tuple(lohi)

    def span(self, i: int, mode: int, first_norm: list):
        return _difference_span(i, self.transform, first_norm) if mode and self.lossy else None

    def add_prediction(self, i: int, v: np.ndarray, preds) -> np.ndarray:
        v = np.asarray(v, np.int64)
        if preds is None:
            return v
        v = preds[i] + v
        return np.clip(v, *self.clip) if _holds_samples(i, self.transform) else v

    def decode_frame(self, streams: list, norm: list, kind: int, mode: int, prev, first_norm: list,
                     rows: int, cols: int) -> np.ndarray:
        """The decoded (rows, cols, samples) int64 frame of its planes' tile streams."""
        preds = _predictions(prev, kind, self.transform, mode) if mode else None
        per_plane = len(bs.tile_grid(rows, cols, self.tile_rows, self.tile_cols))
        planes = []
        for i, lohi in enumerate(norm):
            v = decode_plane(streams[i * per_plane:(i + 1) * per_plane], coder=self.coder, rows=rows, cols=cols,
                             tile_rows=self.tile_rows, tile_cols=self.tile_cols, lohi=tuple(lohi),
                             clip=self.plane_clip(i, mode, lohi), quality=self.quality,
                             max_error=-1 if self.lossy else self.max_error, dtype="int32",
                             first_tile=self.next_tile, source=self.source, span=self.span(i, mode, first_norm))
            self.next_tile += per_plane
            planes.append(self.add_prediction(i, v, preds))
        return _assemble(planes, self.transform, self.clip)


class _GroupEncoder(_GroupCodec):
    """Codes the frames of one group in order, each intra or predicted from the previous one as decoded."""

    def __init__(self, coder: PlaneCoder, *, quality, max_error, tile: int, transform: int, clip: tuple,
                 stats=None):
        super().__init__(coder, quality=quality, max_error=max_error, tile_rows=tile, tile_cols=tile,
                         transform=transform, clip=clip)
        self.tile, self.stats, self.chosen = tile, stats, {}

    def targets(self, frame: np.ndarray, kind: int) -> list:
        """The planes a frame codes (v1's), int64; None for a green-difference plane (it needs the decoded G)."""
        if self.transform == bs.COLOUR_NONE:
            return [frame[:, :, s].astype(np.int64) for s in range(frame.shape[2])]
        if kind == bs.FRAME_GREY:
            return [frame[:, :, 1].astype(np.int64)]
        if self.transform == bs.COLOUR_RCT:
            return [p.astype(np.int64) for p in col.rct_forward(frame)]
        return [frame[:, :, 1].astype(np.int64), None, None]

    def step(self, span: int) -> float:
        """Quantizer step in stored units of a plane (for the rate estimate)."""
        if self.lossy:
            return quantizer_step(self.quality if self.quality is not None else BASE_QUALITIES[-1]) * span
        return float(2 * self.max_error + 1)

    def cost(self, frame: np.ndarray, coded: tuple, first_norm: list) -> float:
        """Rate-distortion cost of a coded frame (norm, streams, decoded): its bits, plus in a lossy stream
        its squared error in units of its plane 0's quantizer step², over the bundle's rdo_lambda."""
        bits = 8.0 * sum(map(len, coded[1]))
        if not self.lossy:
            return bits
        step = self.step(_difference_span(0, self.transform, first_norm))
        sse = float(((coded[2]() - frame.astype(np.int64)) ** 2).sum())
        return bits + sse / (step * step) / float(self.coder.p["rdo_lambda"])

    def estimate_ratio(self, frame: np.ndarray, kind: int, prev, first_norm: list) -> float:
        """Estimated bits of the frame predicted (mode 1) over its bits coded intra (_rate_estimate)."""
        targets = self.targets(frame, kind)
        if self.transform == bs.COLOUR_GREEN_DIFFERENCE and kind == bs.FRAME_COLOUR:
            g = targets[0]
            targets = [g, frame[:, :, 2].astype(np.int64) - g, frame[:, :, 0].astype(np.int64) - g]
        steps = [self.step(_difference_span(i, self.transform, first_norm)) for i in range(len(targets))]
        preds = _predictions(prev, kind, self.transform, 1)
        intra = sum(_rate_estimate(x, st) for x, st in zip(targets, steps))
        predicted = sum(_rate_estimate(x - p, st) for x, p, st in zip(targets, preds, steps))
        if intra <= 0:
            return 1.0 if predicted <= 0 else np.inf
        return predicted / intra

    def code_plane(self, x: np.ndarray, lohi: tuple, span, clip: tuple, role) -> tuple[list, "_Lazy"]:
        """(tile streams, the plane as decode_plane will return it, computed when first asked) of integer plane x."""
        coder, lo, hi = self.coder, int(lohi[0]), int(lohi[1])
        # a difference plane takes the transforms its plane chose in the group's intra frame: trying the
        # others on it (its zeros look flat to the transform gate) costs encode time and measured no bits
        transforms = self.chosen.get(role) or self.chosen.get((role[0], False))
        grid = bs.tile_grid(x.shape[0], x.shape[1], self.tile, self.tile)
        streams, names, bands = [], [], []
        scale = float(max(hi - lo, 1)) if span is None else float(span)
        for t, (r0, r1, c0, c1) in enumerate(grid):
            transform = transforms[t] if transforms is not None else None
            part = x[r0:r1, c0:c1]
            if not self.lossy:
                data = coder.encode_bounded(part, lo, hi, int(self.max_error), self.quality, self.stats, transform)
                names.append(coder.tile_transform(data, True))
            else:
                data, name, levels, q = coder._encode((part.astype(np.float64) - lo) / scale, self.quality,
                                                      self.stats, transform)
                names.append(name)
                bands.append((name, levels, _compact_bands(q)))
            streams.append(data)
        self.chosen.setdefault(role, names)
        exact = x if not self.lossy and self.max_error == 0 else None  # the plane is only kept when it is the result
        shape = x.shape

        def rebuild() -> np.ndarray:
            if not self.lossy:
                if exact is not None:
                    return exact
                return decode_plane(streams, coder=coder, rows=shape[0], cols=shape[1], tile_rows=self.tile,
                                    tile_cols=self.tile, lohi=(lo, hi), clip=clip, quality=0,
                                    max_error=int(self.max_error), dtype="int32").astype(np.int64)
            # what decode_plane computes, from the integer bands the encoder holds (no entropy decoding)
            out = np.empty(shape, np.int64)
            lo_c, hi_c = max(lo, clip[0]), min(hi, clip[1])
            for (r0, r1, c0, c1), (name, levels, q) in zip(grid, bands):
                dequantized, step = coder._dequantize(q, levels, self.quality)
                y = coder.transforms[name].synthesis(dequantized, levels, step=step)
                out[r0:r1, c0:c1] = np.clip(np.round(y[:r1 - r0, :c1 - c0].astype(np.float64) * scale + lo), lo_c, hi_c)
            return out

        return streams, _Lazy(rebuild)

    def encode_frame(self, frame: np.ndarray, kind: int, mode: int, prev, first_norm: list) -> tuple:
        """(norm, tile streams, the decoded frame as a _Lazy) of one frame; `prev` the previous one's _Lazy."""
        preds = _predictions(prev(), kind, self.transform, mode) if mode else None
        targets = self.targets(frame, kind)
        norm, streams, planes = [], [], []
        for i, x in enumerate(targets):
            if x is None:  # B - G' and R - G' against this frame's decoded G
                x = frame[:, :, 2 if i == 1 else 0].astype(np.int64) - planes[0]()
            if mode:
                x = x - preds[i]
                lohi = (int(x.min()), int(x.max()))
            elif self.lossy and self.transform == bs.COLOUR_RCT and i > 0:
                lohi = col.chroma_norm(x, norm[0])
            else:
                lohi = (int(x.min()), int(x.max()))
            tiles, v = self.code_plane(x, lohi, self.span(i, mode, first_norm), self.plane_clip(i, mode, lohi),
                                       (i, bool(mode)))
            norm.append(lohi)
            streams.extend(tiles)
            planes.append(_Lazy(lambda i=i, v=v: self.add_prediction(i, v(), preds)))
        # held as the stored samples' own range needs (uint8 for 8-bit video, not int64): the same values
        compact = np.promote_types(np.min_scalar_type(self.clip[0]), np.min_scalar_type(self.clip[1]))
        return norm, streams, _Lazy(lambda: _assemble([p() for p in planes], self.transform, self.clip).astype(compact))


class _Lazy:
    """A value computed on first use, then kept: the encoder rebuilds a frame as decoded only when a
    prediction or a cost needs it."""

    def __init__(self, fn):
        self.fn, self.done, self.value = fn, False, None

    def __call__(self):
        if not self.done:
            self.value, self.done, self.fn = self.fn(), True, None
        return self.value


@single_blas_thread()
def encode_group(frames: np.ndarray, *, coder: PlaneCoder, quality: int | None, max_error: int | None, tile: int,
                 transform: int, clip: tuple, stats: dict | None = None, modes: list | None = None,
                 keep_decoded: bool = False) -> dict:
    """One group of frames (g, rows, cols, samples) -> {"kinds", "modes", "norm", "streams"}: the unit of work
    of a version 2 encode_image. The first frame is intra; each later one is predicted from the previous
    frame as decoded when that pays (or as `modes` says): the second frame is coded both ways and the
    one of lower cost (bits, plus the squared error over lambda when lossy) kept; later frames are
    predicted when _rate_estimate's ratio of predicted to intra bits (against the previous frame as it
    was, not as decoded: an estimate), scaled by the ratio the second frame's real costs showed, is
    below 1, and coded both ways too when that ratio is within ESTIMATE_DOUBT of 1. `keep_decoded` adds
    "decoded": the frames as the decoder will rebuild them."""
    enc = _GroupEncoder(coder, quality=quality, max_error=max_error, tile=tile, transform=transform, clip=clip,
                        stats=stats)
    kinds = [col.frame_kind(f) if transform != bs.COLOUR_NONE else bs.FRAME_COLOUR for f in frames]
    out = {"kinds": kinds if transform != bs.COLOUR_NONE else [], "modes": [], "norm": [], "streams": []}
    decoded_frames = []
    prev, first_norm, calibration, intra_cost = None, None, 1.0, _Lazy(lambda: np.inf)
    for f, frame in enumerate(frames):
        ratio = (enc.estimate_ratio(frame, kinds[f], frames[f - 1], first_norm)
                 if f > 0 and modes is None else None)
        if f == 0 or modes is not None:
            mode = bs.FRAME_INTRA if f == 0 else int(modes[f])
            norm, streams, decoded = enc.encode_frame(frame, kinds[f], mode, prev, first_norm)
        elif f == 1 or abs(ratio * calibration - 1) < ESTIMATE_DOUBT:
            # both ways, the cheaper kept; the second frame's costs calibrate the estimate of the later ones
            tries = []
            for mode in (bs.FRAME_INTRA, 1):
                enc.stats = {} if stats is not None else None
                tries.append((mode, enc.encode_frame(frame, kinds[f], mode, prev, first_norm), enc.stats))
            enc.stats = stats
            costs = [enc.cost(frame, t[1], first_norm) for t in tries]
            mode, (norm, streams, decoded), st = tries[int(costs[1] < costs[0])]
            if stats is not None:
                stats["estimated_bits"] = stats.get("estimated_bits", 0.0) + st.get("estimated_bits", 0.0)
            if f == 1:
                calibration = (costs[1] / max(costs[0], 1)) / ratio if 0 < ratio < np.inf else 1.0
        else:
            mode = 1 if ratio * calibration < 1.0 else bs.FRAME_INTRA
            enc.stats = {} if stats is not None else None  # only the stats of the coding kept are counted
            coded, coded_stats = enc.encode_frame(frame, kinds[f], mode, prev, first_norm), enc.stats
            if mode != bs.FRAME_INTRA:
                cost = enc.cost(frame, coded, first_norm)
                if cost > intra_cost() * (1 + ESTIMATE_DOUBT):
                    # the estimate missed (the last frame coded on its own cost less than this prediction):
                    # code this one on its own too and keep the cheaper
                    enc.stats = {} if stats is not None else None
                    alone = enc.encode_frame(frame, kinds[f], bs.FRAME_INTRA, prev, first_norm)
                    if enc.cost(frame, alone, first_norm) < cost:
                        mode, coded, coded_stats = bs.FRAME_INTRA, alone, enc.stats
            enc.stats = stats
            if stats is not None:
                stats["estimated_bits"] = stats.get("estimated_bits", 0.0) + coded_stats.get("estimated_bits", 0.0)
            norm, streams, decoded = coded
        if mode == bs.FRAME_INTRA:  # its cost only when a later prediction is checked against it
            intra_cost = _Lazy(lambda frame=frame, coded=(norm, streams, decoded), ref=first_norm if f else norm:
                               enc.cost(frame, coded, ref))
        prev = decoded
        if f == 0:
            first_norm = norm
        out["modes"].append(mode)
        out["norm"].extend(norm)
        out["streams"].extend(streams)
        if keep_decoded:
            decoded_frames.append(decoded())
    if keep_decoded:
        out["decoded"] = np.stack(decoded_frames)
    return out


@single_blas_thread()
def decode_group(streams: list, *, coder: PlaneCoder, norm: list, kinds: list, modes: list, rows: int, cols: int,
                 samples: int, tile_rows: int, tile_cols: int, transform: int, clip: tuple, quality: int,
                 max_error: int, dtype: str, first_tile: int = 0, source=None) -> np.ndarray:
    """One group's tile streams -> its frames (g, rows, cols, samples) of stored values: the unit of work of
    decode_frames. `norm`, `kinds` (empty without colour transform) and `modes` are the group's share of
    the header's. InvalidBitstreamError when a tile does not decode."""
    dec = _GroupCodec(coder, quality=quality, max_error=max_error, tile_rows=tile_rows, tile_cols=tile_cols,
                      transform=transform, clip=clip, source=source, first_tile=first_tile)
    per_plane = len(bs.tile_grid(rows, cols, tile_rows, tile_cols))
    out = np.empty((len(modes), rows, cols, samples), dtype=np.dtype(dtype))
    prev, first_norm, p = None, None, 0
    for f, mode in enumerate(modes):
        kind = kinds[f] if kinds else bs.FRAME_COLOUR
        n = dec.n_planes(kind, samples)
        frame_norm = norm[p:p + n]
        prev = dec.decode_frame(streams[p * per_plane:(p + n) * per_plane], frame_norm, kind, mode, prev,
                                first_norm, rows, cols)
        if f == 0:
            first_norm = frame_norm
        out[f] = prev
        p += n
    return out


def decode_frames(data: bytes, *, coder: PlaneCoder, model_ids=None, source=None, plane_map=None):
    """Yield (first frame index, frames (g, rows, cols, samples)) of a stream, group by group, in order.

    Memory is bounded by a few groups however many frames the stream holds (a series of hundreds of
    slices is written slice by slice). A version 1 stream comes one frame at a time. `plane_map` as
    in decode_image. The stream is checked whole (CRC, structure) before the first group decodes.
    """
    header, streams, _meta = bs.parse(data, source=source, expected_model_ids=model_ids)
    check_tiles(header, coder, source)
    if header.version == bs.GROUPS_VERSION:
        yield from _group_frames(header, streams, coder, source, plane_map)
        return
    # version 1 (frames coded on their own, no groups): decoded whole as before, then one frame at a time
    image, _ = decode_image(data, coder=coder, model_ids=model_ids, source=source, plane_map=plane_map)
    for f in range(header.frames):
        yield f, image.pixels[f:f + 1]


def _group_frames(header: bs.Header, streams: list, coder: PlaneCoder, source, plane_map):
    """(first frame, frames) of each group of a version 2 stream, through decode_group."""
    per_plane = len(bs.tile_grid(header.rows, header.cols, header.tile_rows, header.tile_cols))
    planes = header.frame_planes()
    bits = header.bits_stored
    clip = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if header.signed else (0, (1 << bits) - 1)  # Image.value_range
    options = dict(rows=header.rows, cols=header.cols, samples=header.samples, tile_rows=header.tile_rows,
                   tile_cols=header.tile_cols, transform=header.colour, clip=clip, quality=header.quality,
                   max_error=header.max_error if header.error_bounded else -1, dtype=header.dtype, source=source)
    firsts = header.groups()

    def jobs():
        p = 0
        for g in firsts:
            frames = range(g, min(g + header.group, header.frames))
            n = sum(planes[f] for f in frames)
            yield {"streams": streams[p * per_plane:(p + n) * per_plane], "norm": header.norm[p:p + n],
                   "kinds": [header.frame_kinds[f] for f in frames] if header.frame_kinds else [],
                   "modes": [header.frame_modes[f] for f in frames], "first_tile": p * per_plane}
            p += n

    if plane_map is None:
        results = (decode_group(coder=coder, **job, **options) for job in jobs())
    else:
        results = plane_map(decode_group, jobs(), options, keyword=True)
    padding = _padding_map(header, source)
    for first, frames in zip(firsts, results):
        if padding is not None:  # after the group: the frames predicted from these saw them as coded
            frames = pad.apply(np.array(frames), first, padding, clip, lossy=not header.error_bounded)
        yield first, frames
