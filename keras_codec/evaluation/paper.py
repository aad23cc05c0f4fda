"""Evaluate a trained `paper` model with real entropy coding, beside the seed paper's claims.

Every plane (frame x sample) of every test image is min-max normalized to [0, 1], cut into
tiles and encoded to integer latent symbols by `PaperCodec.encode_image`; the symbols are
range-coded for real by `edge_runtime.entropy` with one table per latent channel, converted
from the model's tensorflow-compression tables (`paper_entropy_tables`). A plane costs its
coded bytes plus `PLANE_HEADER_BYTES` (tile grid, padding, min and max). The bytes are decoded
back, the symbols must come out identical, and the decoded plane is de-normalized, rounded
and clipped to the stored range before `keras_codec.evaluation.metrics.evaluate` compares it with the
original.

`evaluate_paper(run_dir)` loads `run_dir/final` or, for an unfinished run, its latest
checkpoint (see `keras_codec.training.paper.load_paper`). A preset of the evaluation engine: the
images are :func:`keras_codec.evaluation.engine.evaluation_images`, the claim its ``PAPER``.
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from edge_runtime.entropy import Decoder, Encoder, EntropyTables, quantize_pmf
from keras_codec.evaluation import metrics
from keras_codec.evaluation.engine import PAPER, evaluation_images

__all__ = ["paper_entropy_tables", "PaperTables", "code_plane", "decode_plane", "evaluate_paper",
           "PLANE_HEADER_BYTES", "PAPER_CLAIM"]

PLANE_HEADER_BYTES = 16  # tile rows, cols (2 x u16), pad (2 x u8), plane min / max (2 x f32), stream length (u32), spare
PAPER_CLAIM = {"psnr": PAPER.psnr, "ssim": PAPER.ssim, "reduction": PAPER.reduction}
PAD_PMF = 1e-9  # probability given to the values added to make a table's range symmetric


@dataclass
class PaperTables:
    """The range coder's tables for the paper latent: table i codes channel i as symbol - centre[i]."""

    tables: EntropyTables
    centres: np.ndarray  # (latent_dim,) int64


def paper_entropy_tables(t: dict) -> PaperTables:
    """One `EntropyTables` table per latent channel from `PaperCodec.entropy_tables()`.

    Channel i's CDF (precision `t["precision"]`) covers the symbols cdf_offset[i] ..
    cdf_offset[i] + n - 1 (n = cdf_length[i] - 2) and then an overflow interval. Its
    differences give the pmf; the symbols are re-centred on the middle of that range
    (centre = cdf_offset + (n - 1) // 2), the range is padded to a symmetric -T..T with
    tiny probabilities, and the overflow mass becomes the escape symbol's.
    """
    cdf, lengths, offsets = (np.asarray(t[k], np.int64) for k in ("cdf", "cdf_length", "cdf_offset"))
    freqs, tails, centres = [], [], []
    for i in range(cdf.shape[0]):
        row = cdf[i, : lengths[i]]
        pmf = np.diff(row).astype(np.float64) / float(row[-1] - row[0])
        n = int(lengths[i]) - 2
        inside, overflow = pmf[:n], pmf[n]
        half = (n - 1) // 2
        tail = max(n - 1 - half, half)
        p = np.full(2 * tail + 2, PAD_PMF)
        p[tail - half: tail - half + n] = np.maximum(inside, PAD_PMF)
        p[-1] = max(overflow, PAD_PMF)
        freqs.append(quantize_pmf(p))
        tails.append(tail)
        centres.append(int(offsets[i]) + half)
    return PaperTables(EntropyTables(freqs, np.asarray(tails, np.int64)), np.asarray(centres, np.int64))


def _indices(n_tiles: int, latent_dim: int) -> np.ndarray:
    return np.tile(np.arange(latent_dim, dtype=np.int64), n_tiles)


def code_plane(model, tables: PaperTables, plane: np.ndarray) -> dict:
    """Encode one [0, 1] plane: {"data" (bytes), "symbols", "grid", "pad", "est_bits"}."""
    symbols, grid, pad = model.encode_image(plane)
    enc = Encoder(tables.tables)
    enc.encode((symbols.astype(np.int64) - tables.centres).ravel(), _indices(*symbols.shape))
    return {"data": enc.getvalue(), "symbols": symbols, "grid": grid, "pad": pad,
            "est_bits": float(np.sum(model.estimated_bits(symbols)))}


def decode_plane(model, tables: PaperTables, data: bytes, grid, pad) -> tuple[np.ndarray, np.ndarray]:
    """(symbols, [0, 1] float32 plane) back from `code_plane`'s bytes, grid and pad."""
    n = int(grid[0]) * int(grid[1])
    dim = len(tables.centres)
    values = Decoder(tables.tables, data).decode(_indices(n, dim)).reshape(n, dim)
    symbols = (values + tables.centres).astype(np.int32)
    return symbols, model.decode_image(symbols, grid, pad)


def _fmt(v, spec):
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _markdown(rows: list, mean: dict, step: int, run_dir: str) -> str:
    head = ("| image | modality | planes | bpp | PSNR (dB, dyn. range) | SSIM | max abs err | CR | "
            "size reduction | real / est. bits |")
    lines = [f"paper model from `{run_dir}` (step {step}), real range coding via edge_runtime.entropy, "
             f"{PLANE_HEADER_BYTES} header bytes per plane", "", head, "|" + "---|" * 10]
    for r in rows + [mean]:
        lines.append(f"| {r['image']} | {r.get('modality', '')} | {r.get('planes', '')} | {_fmt(r['bpp'], '.3f')} | "
                     f"{_fmt(r['psnr'], '.2f')} | {_fmt(r['ssim'], '.4f')} | {_fmt(r['max_abs_err'], '.0f')} | "
                     f"{_fmt(r['cr'], '.1f')} | {_fmt(100 * r['reduction'], '.1f')} % | "
                     f"{_fmt(r['bits_ratio'], '.4f')} |")
    c = PAPER_CLAIM
    lines.append(f"| seed paper's claim | | | | {c['psnr']:.0f} | {c['ssim']:.2f} | | | {100 * c['reduction']:.0f} % | |")
    return "\n".join(lines)


def evaluate_paper(run_dir: str, out_dir: str = "out/eval_paper", folder=None, progress=print) -> dict:
    """Code every plane of the test split (or of the images under `folder`) for real; write CSV + markdown.

    Returns {"rows": per-image dicts, "mean": their mean, "step", "markdown"}.
    """
    # imported here: both pull TensorFlow, which the edge venv (keras-codec demo) does not have
    from data.pipeline import NormParams
    from keras_codec.training.paper import load_paper

    model, step = load_paper(run_dir)
    tables = paper_entropy_tables(model.entropy_tables())
    rows = []
    for name, img in evaluation_images(folder):
        t0 = time.perf_counter()
        lo, hi = img.value_range
        decoded = np.empty_like(img.pixels)
        n_bytes, real_bits, est_bits = 0, 0.0, 0.0
        for f in range(img.frames):
            for s in range(img.samples):
                stored = img.pixels[f, :, :, s]
                params = NormParams.from_plane(stored)
                coded = code_plane(model, tables, params.normalize(stored))
                symbols, plane = decode_plane(model, tables, coded["data"], coded["grid"], coded["pad"])
                if not np.array_equal(symbols, coded["symbols"]):
                    raise AssertionError(f"{name} plane ({f}, {s}): decoded symbols differ from the encoded ones")
                values = np.clip(np.rint(params.denormalize(plane)), lo, hi)
                decoded[f, :, :, s] = values.astype(img.pixels.dtype)
                n_bytes += len(coded["data"]) + PLANE_HEADER_BYTES
                real_bits += 8 * len(coded["data"])
                est_bits += coded["est_bits"]
        m = metrics.evaluate(img.pixels, decoded, n_bytes, img.bits_stored, img.bits_allocated)
        row = {"image": name, "modality": img.modality, "planes": img.frames * img.samples,
               "rows": img.rows, "cols": img.cols, "bits_stored": img.bits_stored, "n_bytes": n_bytes,
               **{k: float(v) for k, v in m.items()}, "real_bits": real_bits, "est_bits": est_bits,
               "bits_ratio": real_bits / est_bits if est_bits else float("nan"),
               "seconds": time.perf_counter() - t0}
        rows.append(row)
        if progress:
            progress(f"{name}: {row['bpp']:.3f} bpp, {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f}, "
                     f"real/est bits {row['bits_ratio']:.4f} ({row['seconds']:.1f} s)")
    keys = ("bpp", "psnr", "psnr_bitdepth", "ssim", "ms_ssim", "max_abs_err", "cr", "reduction", "bits_ratio")
    mean = {"image": "**mean**", "modality": "", "planes": sum(r["planes"] for r in rows),
            **{k: float(np.mean([r[k] for r in rows])) for k in keys}}
    os.makedirs(out_dir, exist_ok=True)
    fields = list(rows[0]) if rows else ["image"]
    with open(os.path.join(out_dir, "eval_paper.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows + [{**mean, "image": "mean"}])
        w.writerow({"image": "paper_claim", "psnr": PAPER_CLAIM["psnr"], "ssim": PAPER_CLAIM["ssim"],
                    "reduction": PAPER_CLAIM["reduction"]})
    md = _markdown(rows, mean, step, run_dir)
    with open(os.path.join(out_dir, "eval_paper.md"), "w") as fh:
        fh.write(md + "\n")
    if progress:
        progress(md)
    return {"rows": rows, "mean": mean, "step": step, "markdown": md}
