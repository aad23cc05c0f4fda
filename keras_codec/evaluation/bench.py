"""`keras-codec bench`: the full report, a preset of :mod:`keras_codec.evaluation.engine`.

:func:`run_bench` reads the images once, then each entry of :data:`SECTIONS` (a function of a
:class:`BenchContext`) measures, writes its CSV and PNG files and returns its part of
``results.md``: rate-distortion against JPEG 2000, JPEG XL and JPEG-LS (:func:`rd_section`), the
classical codecs' lossless bpp, our near-lossless and lossless coding
(:func:`keras_codec.evaluation.bounded.near_lossless_section`) and, with ``--speed``, speed and
peak memory (:mod:`keras_codec.evaluation.speed`).
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edge_runtime.runtime import DEFAULT_QUALITY
from keras_codec.evaluation import baselines
from keras_codec.evaluation import speed as speed_bench  # `speed` is run_bench's flag
from keras_codec.evaluation.bounded import near_lossless_section
from keras_codec.evaluation.engine import (BD_RANGE, CLASSICAL, MIN_OVERLAP, PAPER, OurCodec,
                                           bd_line, bpp_at, classical_codecs, compare_image, fmt_num,
                                           image_panel, image_sources, mean_cell, paper_point, plot_rd,
                                           read_sources, safe_name, write_csv)

__all__ = ["BENCH_WINDOW", "SECTIONS", "SECTION_KEYS", "BenchContext", "lossless_section", "rd_section",
           "run_bench", "speed_section"]

BENCH_WINDOW = (38.0, 57.0)
"""The bench keeps our quality levels whose PSNR lands here (BD_RANGE with room for the interpolation)."""


@dataclass
class BenchContext:
    """What the sections share: the options, the images read once, and results as they are measured."""

    models: list
    sources: list  # (name, path, Image)
    out_dir: Path
    progress: Callable = print
    speed: bool = False
    runs: int = 5
    threads: int = 2
    speed_quality: int | None = None
    results: list = field(default_factory=list)  # ImageResult per image, filled by the RD section
    notes: list = field(default_factory=list)


def rd_section(ctx: BenchContext) -> str:
    """Our RD points at every level landing in BENCH_WINDOW, the classical curves, BD-rates; CSV and PNGs."""
    classical = classical_codecs()
    for name, path, image in ctx.sources:
        try:
            res = compare_image(name, image, ctx.models, classical, window=BENCH_WINDOW, start=_start_level(),
                                tol=0.1, with_ssim=True, targets_window=BENCH_WINDOW, target_spacing=1.0, path=path,
                                progress=ctx.progress)
        except (ValueError, OSError, RuntimeError) as exc:
            ctx.progress(f"{name}: failed, skipped ({exc})")
            ctx.notes.append(f"{name}: failed, skipped ({exc})")
            continue
        ctx.results.append(res)
        for m in res.ours:
            ctx.progress(bd_line(res, m))
        plot_rd(ctx.out_dir / f"rd_{safe_name(name)}.png", [image_panel(res, BENCH_WINDOW)], BENCH_WINDOW)
    rows = [r for res in ctx.results for r in res.rows()]
    write_csv(ctx.out_dir / "points.csv", rows)
    bd_rows = [{"image": res.name, "modality": res.modality, "model": m, "anchor": c, "bd_rate": res.bd(m, c)}
               for res in ctx.results for m in res.ours for c in CLASSICAL]
    write_csv(ctx.out_dir / "bd_rate.csv", bd_rows)
    for modality in sorted({res.modality for res in ctx.results}):
        group = [res for res in ctx.results if res.modality == modality]
        panels = [image_panel(res, BENCH_WINDOW) for res in group]
        plot_rd(ctx.out_dir / f"rd_modality_{safe_name(modality)}.png", panels, BENCH_WINDOW)
    return _rd_markdown(ctx)


def _start_level() -> int:
    return DEFAULT_QUALITY


def _rd_markdown(ctx: BenchContext) -> str:
    results, models = ctx.results, [m.label for m in ctx.models]
    lines = [f"BD-rate of ours against each classical codec over {BD_RANGE[0]:.0f}-{BD_RANGE[1]:.0f} dB "
             "(dynamic-range PSNR, PCHIP on each codec's Pareto front; negative = fewer bits than that codec; "
             f"n/a = the curves do not overlap; † = they overlap less than {MIN_OVERLAP:.0f} dB (width in "
             "brackets), shown but left out of the means).",
             "", "| image | modality | model | levels (PSNR) | vs JPEG 2000 | vs JPEG XL | vs JPEG-LS |",
             "|---|---|---|---|---|---|---|"]
    for res in results:
        for m in models:
            rows = [r for r in res.ours.get(m, []) if math.isfinite(r["psnr"])]
            span = f"{len(rows)} ({min(r['psnr'] for r in rows):.1f}-{max(r['psnr'] for r in rows):.1f} dB)" \
                if rows else "0"
            lines.append(f"| {res.name} | {res.modality} | {m} | {span} | " +
                         " | ".join(res.bd_cell(m, c) for c in CLASSICAL) + " |")
    for modality in sorted({res.modality for res in results}):
        group = [res for res in results if res.modality == modality]
        if len(group) > 1:
            for m in models:
                lines.append(f"| mean of {len(group)} | {modality} | {m} | | " +
                             " | ".join(mean_cell(group, m, c) for c in CLASSICAL) + " |")
    for m in models:
        lines.append(f"| **mean of {len(results)} images** | | {m} | | " +
                     " | ".join(f"**{mean_cell(results, m, c)}**" for c in CLASSICAL) + " |")
    target = PAPER.psnr
    lines += ["", f"At {target:.0f} dB (bpp interpolated on each curve; the seed paper claims {target:.0f} dB at "
              f"{100 * PAPER.reduction:.0f} % size reduction, i.e. {1 - PAPER.reduction:.2f} x bits allocated bpp, "
              f"SSIM {PAPER.ssim}):", "",
              "| image | model | ours bpp | ours reduction | ours SSIM | JPEG 2000 bpp | JPEG XL bpp | JPEG-LS bpp "
              "| paper's claim bpp |", "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for m in models:
            rows = res.ours.get(m, [])
            b = bpp_at(rows, target)
            red = 1.0 - b / res.bits_allocated if math.isfinite(b) else math.nan
            ssim = _interp_ssim(rows, target)
            theirs = " | ".join(fmt_num(bpp_at(res.classical.get(c, []), target), ".3f") for c in CLASSICAL)
            lines.append(f"| {res.name} | {m} | {fmt_num(b, '.3f')} | {fmt_num(100 * red, '.1f')} % | {fmt_num(ssim, '.4f')} | "
                         f"{theirs} | {paper_point(res.bits_allocated)['bpp']:.2f} |")
    notes = [n for res in results for n in (f"{res.name}: {x}" for x in res.notes)] + ctx.notes
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    lines += ["", "Files: `points.csv` (every point: ours per quality level, each classical setting tried), "
              "`bd_rate.csv`, `rd_<image>.png`, `rd_modality_<modality>.png`."]
    return "\n".join(lines)


def _interp_ssim(rows, psnr: float) -> float:
    pts = sorted((r["psnr"], r["ssim"]) for r in rows if math.isfinite(r["psnr"]) and "ssim" in r)
    if len(pts) < 2 or not pts[0][0] <= psnr <= pts[-1][0]:
        return math.nan
    return float(np.interp(psnr, [p for p, _ in pts], [s for _, s in pts]))


def lossless_section(ctx: BenchContext) -> str:
    """Lossless bpp of JPEG-LS, JPEG 2000 and JPEG XL on every image, for reference."""
    rows = []
    for name, _, image in ctx.sources:
        row = {"image": name, "modality": image.modality}
        for codec in classical_codecs(("jpegls", "jpeg2000", "jpegxl")):
            t0 = time.perf_counter()
            try:
                row[codec.name] = baselines.lossless_bpp(image.pixels, image.bits_stored, [codec])[codec.name]
                ctx.progress(f"{name:36s} {codec.name:>14s}: lossless {row[codec.name]:.3f} bpp, "
                             f"{time.perf_counter() - t0:.1f} s")
            except Exception as exc:  # noqa: BLE001 - an external codec refusing this input is a note, not a stop
                row[codec.name] = math.nan
                ctx.progress(f"{name:36s} {codec.name:>14s}: lossless left out ({exc})")
        rows.append(row)
    write_csv(ctx.out_dir / "lossless.csv", rows)
    lines = ["Lossless bpp for reference (exact round trips checked):", "",
             "| image | modality | JPEG-LS | JPEG 2000 | JPEG XL |", "|---|---|---|---|---|"]
    lines += [f"| {r['image']} | {r['modality']} | " + " | ".join(fmt_num(r[c], ".3f")
                                                                   for c in ("jpegls", "jpeg2000", "jpegxl")) + " |"
              for r in rows]
    return "\n".join(lines)


def speed_section(ctx: BenchContext) -> str:
    """Encode / decode time (median of runs, file to file) and peak memory: ours and the classical codecs."""
    if not ctx.speed:
        return ""
    quality = ctx.speed_quality or _start_level()
    rows = []
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="keras_codec_speed_") as tmp:
        for model in ctx.models:
            if model.backend != "edge":
                ctx.progress(f"speed: {model.label} has no TFLite graphs; left out (the timing is the edge's)")
                continue
            label = f"ours {model.label} (edge, TFLite)"
            for name, path, _ in ctx.sources:
                try:
                    rows += speed_bench.image_speed(name, path, bundle=model.path, quality=quality, runs=ctx.runs,
                                              threads=ctx.threads, tmp=tmp, load1=os.getloadavg()[0], label=label,
                                              progress=ctx.progress)
                except (ValueError, OSError, RuntimeError) as exc:
                    ctx.progress(f"speed: {name} left out ({str(exc).splitlines()[0]})")
    load_end = os.getloadavg()
    if not rows:
        return "No speed measurement (no bundle with TFLite graphs)."
    write_csv(ctx.out_dir / "speed.csv", [{k: r[k] for k in speed_bench.COLUMNS} for r in rows])
    note = (f"median of {ctx.runs} runs after a warm-up, file to file; ours {ctx.threads} TFLite threads at "
            f"q{quality}, classical codecs 1 thread; peak RSS = VmHWM of a fresh process per measurement "
            f"(interpreter and imports included); {os.cpu_count()} CPUs, load average {load_start[0]:.2f} at "
            f"start, {load_end[0]:.2f} at end")
    speed_bench.plot(rows, ctx.out_dir / "speed.png", f"keras-codec bench --speed; {note}")
    cols = ("image", "codec", "mode", "bpp", "psnr", "encode_ms", "decode_ms", "peak_rss_mib_enc", "peak_rss_mib_dec")
    lines = [f"Speed ({note}):", "", "| image | codec | mode | bpp | PSNR dB | encode ms | decode ms | "
             "peak MiB enc | peak MiB dec |", "|---|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


SECTIONS = [
    ("Rate-distortion", rd_section),
    ("Lossless (classical codecs)", lossless_section),
    ("Near-lossless and lossless (ours, max error D)", near_lossless_section),
    ("Speed", speed_section),
]
"""The report's sections in order: (title, function of a BenchContext returning markdown)."""
SECTION_KEYS = ("rd", "lossless", "bounded", "speed")
"""Short names of SECTIONS, in the same order (`keras-codec bench --only`)."""


def run_bench(models=None, folder=None, out_dir="out/bench", *, backend: str = "auto", speed: bool = False,
              runs: int = 5, threads: int = 2, speed_quality: int | None = None, sections=None,
              progress=print, command: str = "") -> dict:
    """Measure every section on the test split (or `folder`) for each bundle; write CSVs, PNGs and results.md.

    `models`: bundle folders (default: the shipped one). Returns {"results": [ImageResult],
    "markdown": str, "out_dir": Path}.
    """
    if speed and runs < 5:
        raise ValueError(f"DESIGN.md's timing rule asks for at least 5 runs, got --runs {runs}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    codecs = [OurCodec(m, backend=backend, num_threads=threads) for m in (models or [None])]
    labels = [c.label for c in codecs]
    for c in codecs:  # two bundles in folders of the same name stay apart
        if labels.count(c.label) > 1:
            c.label = f"{c.label}@{c.model_id.hex()[:8]}"
    for c in codecs:
        progress(f"model {c.label}: {c.path} (id {c.model_id.hex()[:16]}…, {c.backend} backend)")
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    sources = list(read_sources(image_sources(folder), progress))
    if not sources:
        raise ValueError(f"no readable image in {folder if folder is not None else 'the test split'}")
    ctx = BenchContext(models=codecs, sources=sources, out_dir=out_dir, progress=progress, speed=speed, runs=runs,
                       threads=threads, speed_quality=speed_quality)
    parts = []
    for title, section in (sections or SECTIONS):
        text = section(ctx)
        if text:
            parts.append(f"## {title}\n\n{text}\n")
    load_end = os.getloadavg()
    header = ["# keras_codec benchmark", "",
              f"Command: `{command or 'keras-codec bench'}`", "",
              f"Images: {'the corpus test split' if folder is None else folder} ({len(sources)} read); models: " +
              ", ".join(f"`{c.label}` (id `{c.model_id.hex()[:16]}`, {c.backend})" for c in codecs) + ".",
              f"Protocol: DESIGN.md (stored integers; PSNR over the image's dynamic range; bpp from real "
              f"codestream bytes, headers included). Classical codecs through imagecodecs: JPEG 2000 = OpenJPEG "
              f"(fixed-quality PSNR target), JPEG XL = libjxl effort 7 (distance), JPEG-LS = CharLS (NEAR), each "
              f"searched toward our PSNRs. {os.cpu_count()} CPUs, load average {load_start[0]:.2f} at start, "
              f"{load_end[0]:.2f} at end, {time.perf_counter() - t0:.0f} s.", ""]
    markdown = "\n".join(header) + "\n" + "\n".join(parts)
    (out_dir / "results.md").write_text(markdown)
    return {"results": ctx.results, "markdown": markdown, "out_dir": out_dir}
