"""Image <-> .kcd stream for the wavelet codec: the one encoder and decoder both sides call.

The wavelet transforms come from a `transforms` object with `analysis(plane, levels)` and
`synthesis(bands, levels)`: TFLite graphs on the edge, the Keras layers on the workstation.
Everything else (normalization, quantization, context model, entropy coding, container) is
here, in numpy, so both sides produce and read the same bytes.
"""
from __future__ import annotations

import numpy as np

from data.image import Image
from edge_runtime import bitstream as bs
from edge_runtime.subband_coder import CodingModel, decode_subbands, encode_subbands

QUALITY_LEVELS = tuple(range(1, 23))
_STEP_K = np.sqrt(12.0) * 0.75


def nominal_psnr(quality: int) -> float:
    """Quality q aims at about 12 + 2q dB PSNR over the plane's dynamic range (smooth images get more)."""
    if quality not in QUALITY_LEVELS:
        raise ValueError(f"quality must be in {QUALITY_LEVELS[0]}..{QUALITY_LEVELS[-1]}, got {quality}")
    return 12.0 + 2.0 * quality


def quantizer_step(quality: int) -> float:
    """Quantizer step in normalized units ([0, 1] = the plane's dynamic range)."""
    return float(_STEP_K * 10.0 ** (-nominal_psnr(quality) / 20.0))


def levels_for(rows: int, cols: int, max_levels: int) -> int:
    """As deep as keeps the coarsest band at least about 8 samples on its short side."""
    return int(max(1, min(max_levels, np.floor(np.log2(max(min(rows, cols), 2) / 8.0)))))


def padded_shape(rows: int, cols: int, levels: int) -> tuple[int, int]:
    m = 1 << levels
    return -(-rows // m) * m, -(-cols // m) * m


def pad_plane(x: np.ndarray, levels: int) -> np.ndarray:
    """Mirror-pad a plane at the bottom and right to a multiple of 2**levels, as float32."""
    pr, pc = padded_shape(*x.shape, levels)
    return np.pad(x, ((0, pr - x.shape[0]), (0, pc - x.shape[1])), mode="symmetric").astype(np.float32)


def quantize_bands(bands: list, step: float, deadzone: float) -> tuple[list, list]:
    """Wavelet bands -> (bands in quantizer steps, integer bands): LL rounded, details deadzone-quantized."""
    scaled = [bands[0] / step] + [tuple(b / step for b in trio) for trio in bands[1:]]
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
    """

    def __init__(self, params: dict, coding: CodingModel, transforms):
        self.p = params
        self.coding = coding
        if not isinstance(transforms, dict):
            transforms = {params.get("wavelet", "cdf97"): transforms}
        self.transforms = transforms
        self.names = [n for n in params.get("transforms", [params.get("wavelet", "cdf97")]) if n in transforms]
        if not self.names:
            raise ValueError(f"none of the bundle's transforms {params.get('transforms')} is available")

    def levels(self, rows: int, cols: int) -> int:
        return levels_for(rows, cols, int(self.p["levels"]))

    def _encode_with(self, name: str, xp: np.ndarray, levels: int, step: float, stats=None):
        scaled, q = quantize_bands(self.transforms[name].analysis(xp, levels), step, float(self.p["deadzone"]))
        bias = float(self.p["recon_bias"])
        final = []
        data = encode_subbands(q, self.coding, coeffs=scaled, lam=float(self.p["rdo_lambda"]), bias=bias,
                               rdo_out=final, stats=stats)
        sse = float(((scaled[0] - final[0]) ** 2).sum())
        for xs, qs in zip(scaled[1:], final[1:]):
            sse += sum(float(((x - dequantize(qq, bias)) ** 2).sum()) for x, qq in zip(xs, qs))
        return data, sse

    def encode(self, x: np.ndarray, quality: int, stats: dict | None = None) -> bytes:
        """Tile stream of plane `x`; `stats` (optional) accumulates "estimated_bits" of what is written."""
        levels = self.levels(*x.shape)
        xp = pad_plane(x, levels)
        step = quantizer_step(quality)
        lam = float(self.p["rdo_lambda"])
        names = self.names
        if len(names) > 1 and _equal_pair_fraction(x) < float(self.p.get("transform_gate", 0.5)):
            names = names[:1]
        best = None
        for i, name in enumerate(names):
            st = {} if stats is not None else None
            data, sse = self._encode_with(name, xp, levels, step, st)
            cost = sse + lam * 8 * len(data)
            if best is None or cost < best[0]:
                best = (cost, bytes([i]) + data, st)
        if stats is not None:
            stats["estimated_bits"] = stats.get("estimated_bits", 0.0) + 8 + best[2]["estimated_bits"]
        return best[1]

    def decode(self, data: bytes, rows: int, cols: int, quality: int) -> np.ndarray:
        if len(data) < 1 or data[0] >= len(self.names):
            raise ValueError("tile stream names an unknown transform")
        name = self.names[data[0]]
        levels = self.levels(rows, cols)
        pr, pc = padded_shape(rows, cols, levels)
        q = decode_subbands(data[1:], _band_shapes(pr, pc, levels), self.coding)
        step = quantizer_step(quality)
        bias = float(self.p["recon_bias"])
        bands = [q[0].astype(np.float32) * step] + [tuple((dequantize(b, bias) * step).astype(np.float32)
                                                          for b in trio) for trio in q[1:]]
        y = self.transforms[name].synthesis(bands, levels, step=step)
        return y[:rows, :cols]


def _equal_pair_fraction(x: np.ndarray) -> float:
    """Share of horizontally and vertically adjacent pixel pairs with identical values."""
    h = x[:, 1:] == x[:, :-1]
    v = x[1:, :] == x[:-1, :]
    n = h.size + v.size
    return float(h.sum() + v.sum()) / n if n else 0.0


def _planes(image: Image):
    for f in range(image.frames):
        for s in range(image.samples):
            yield image.pixels[f, :, :, s]


def encode_image(image: Image, *, coder: PlaneCoder, model_id: bytes, quality: int,
                 tile: int = 2048, metadata: bytes | None = None, stats: dict | None = None) -> bytes:
    """Image -> .kcd bytes (every frame and sample plane, tile by tile).

    `stats` (optional) receives "estimated_bits": the model's code length of the tile
    streams, to compare with the real size.
    """
    norm, streams = [], []
    grid = bs.tile_grid(image.rows, image.cols, tile, tile)
    for plane in _planes(image):
        lo, hi = int(plane.min()), int(plane.max())
        norm.append((lo, hi))
        scale = float(max(hi - lo, 1))
        for r0, r1, c0, c1 in grid:
            x = (plane[r0:r1, c0:c1].astype(np.float64) - lo) / scale
            streams.append(coder.encode(x, quality, stats=stats))
    header = bs.Header(model_id=model_id, rows=image.rows, cols=image.cols, frames=image.frames,
                       samples=image.samples, bits_stored=image.bits_stored, signed=image.signed,
                       dtype=image.pixels.dtype.name, photometric=image.photometric, quality=quality,
                       max_error=-1, lossless=False, levels=int(coder.p["levels"]), tile_rows=tile,
                       tile_cols=tile, norm=norm)
    return bs.pack(header, streams, metadata)


def decode_image(data: bytes, *, coder: PlaneCoder, model_ids=None, source=None) -> tuple[Image, bs.Header]:
    """.kcd bytes -> Image (stored values, clipped to the stored range)."""
    header, streams, _meta = bs.parse(data, source=source, expected_model_ids=model_ids)
    dtype = np.dtype(header.dtype)
    pixels = np.empty((header.frames, header.rows, header.cols, header.samples), dtype=dtype)
    image = Image(pixels=pixels, bits_stored=header.bits_stored, signed=header.signed,
                  photometric=header.photometric, source=source)
    vmin, vmax = image.value_range
    grid = bs.tile_grid(header.rows, header.cols, header.tile_rows, header.tile_cols)
    i = 0
    for p, (lo, hi) in enumerate(header.norm):
        f, s = divmod(p, header.samples)
        scale = float(max(hi - lo, 1))
        for r0, r1, c0, c1 in grid:
            try:
                y = coder.decode(streams[i], r1 - r0, c1 - c0, header.quality)
            except (ValueError, AssertionError, IndexError, OverflowError) as exc:
                # constriction reports exhausted or inconsistent coded data with AssertionError
                raise bs.InvalidBitstreamError(source, f"tile {i} does not decode ({exc or type(exc).__name__}); "
                                                       "the stream is corrupt") from exc
            except BaseException as exc:  # a Rust panic surfaces as pyo3's PanicException (a BaseException)
                if type(exc).__name__ != "PanicException":
                    raise
                raise bs.InvalidBitstreamError(source, f"tile {i} does not decode (coder panic: {exc}); "
                                                       "the stream is corrupt") from None
            i += 1
            v = np.round(y.astype(np.float64) * scale + lo)
            pixels[f, r0:r1, c0:c1, s] = np.clip(v, max(lo, vmin), min(hi, vmax)).astype(dtype)
    return image, header
