"""`keras-codec demo` (`make demo`): the shipped default bundle on the sample corpus's test split, or a folder.

A preset of :mod:`keras_codec.evaluation.engine`, a small bench: each image is coded through the
edge runtime (TFLite, no Keras) at a few quality levels spanning about 40-55 dB, and JPEG 2000,
JPEG XL and JPEG-LS are searched to the same PSNRs; one table per image, then BD-rates. At the
default quality the image goes file to file: encoded to .kcd, decoded back to DICOM, verified,
and drawn as an error map.

Nothing on this path imports the training side (TensorFlow, Keras, `export`): `make demo` runs it in
the TensorFlow-free .venv-edge on Python 3.11-3.13 (tests/edge/test_edge_demo.py holds it to that).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from data.readers import read_image
from edge_runtime import runtime
from keras_codec.evaluation import engine

__all__ = ["DEMO_SPACING", "DEMO_TOL", "DEMO_WINDOW", "image_table", "plot_error_map", "run_demo", "summary_table"]

DEMO_WINDOW = (40.0, 55.0)
"""The demo walks quality levels from the default until the PSNR leaves this window (one level beyond kept)."""
DEMO_SPACING = 2.5
"""About this many dB between the demo's levels (the stride adapts to each image's slope)."""
DEMO_TOL = 0.2
"""Classical searches stop within this many dB above our PSNR; the bpp is then interpolated to it exactly."""


def _file_point(ours, name, path, image, quality, out_dir: Path, progress) -> tuple[dict, object]:
    """Encode to .kcd, decode to .dcm, verify; the measured row and the decoded image as a user reads it."""
    stem = engine.safe_name(name)
    kcd, dcm = out_dir / f"{stem}.kcd", out_dir / f"{stem}.dcm"
    t0 = time.perf_counter()
    enc = runtime.encode_file(path, kcd, quality=quality, bundle=ours.runtime_codec, force=True)
    t1 = time.perf_counter()
    runtime.decode_file(kcd, dcm, force=True, bundle=ours.runtime_codec)
    t2 = time.perf_counter()
    runtime.verify(kcd, bundle=ours.runtime_codec)
    decoded = read_image(dcm)
    row = engine.our_row(ours, image, quality, decoded, enc["pixel_bytes"], t1 - t0, t2 - t1)
    return row, decoded


def run_demo(folder=None, out_dir="out/demo", quality=None, progress=print) -> list[dict]:
    """Run the demo; returns our rows (every image and level). Files go to `out_dir`."""
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    quality = runtime.DEFAULT_QUALITY if quality is None else int(quality)
    ours = engine.OurCodec(None, backend="edge")
    progress(f"bundle {ours.path} (model {ours.model_id.hex()[:16]}…), edge runtime (TFLite); files at quality "
             f"{quality}; levels walked from there across {DEMO_WINDOW[0]:.0f}-{DEMO_WINDOW[1]:.0f} dB")
    progress(f"classical codecs at our PSNR: quality knob searched (JPEG 2000 PSNR target, JPEG XL distance, "
             f"JPEG-LS NEAR) to within {DEMO_TOL} dB, bpp then interpolated (PCHIP, log bpp) to our exact PSNR")
    results, rows = [], []
    for name, path, image in engine.read_sources(engine.image_sources(folder), progress):
        t0 = time.perf_counter()
        try:
            file_row, decoded = _file_point(ours, name, path, image, quality, out_dir, progress)

            def measure(codec, q, file_row=file_row, image=image):
                return file_row if q == quality else engine.our_point(codec, image, q)

            res = engine.compare_image(name, image, [ours], engine.classical_codecs(), start=quality,
                                      window=DEMO_WINDOW, spacing=DEMO_SPACING, tol=DEMO_TOL, with_ssim=False,
                                      measure=measure, path=path, progress=lambda _: None)
        except (ValueError, OSError, RuntimeError) as exc:
            progress(f"{name}: failed, skipped ({exc})")
            continue
        results.append(res)
        rows += [{"image": name, "modality": image.modality, **r} for r in res.ours[ours.label]]
        stem = engine.safe_name(name)
        engine.plot_rd(out_dir / f"{stem}_rd.png", [engine.image_panel(res)],
                      (DEMO_WINDOW[0] - 3, DEMO_WINDOW[1] + 3))
        plot_error_map(out_dir / f"{stem}_error.png", name, image, decoded, file_row)
        progress("")
        for line in image_table(res, ours.label, quality):
            progress(line)
        progress(f"  ({time.perf_counter() - t0:.1f} s)")
    if not results:
        progress("no image could be coded")
        return rows
    progress("")
    for line in summary_table(results, ours.label):
        progress(line)
    engine.write_csv(out_dir / "demo.csv", [r for res in results for r in res.rows()])
    load_end = os.getloadavg()
    progress(f"\nwrote to {out_dir}/: <image>.kcd and <image>.dcm (quality {quality}, verified), "
             "<image>_rd.png (RD curves), <image>_error.png (error map), demo.csv")
    progress(f"demo took {time.perf_counter() - t_start:.0f} s on {os.cpu_count()} CPUs "
             f"(load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end)")
    return rows


def image_table(res, model: str, quality: int) -> list:
    """One image's table: our levels with bpp, PSNR, SSIM, max error, and each classical codec's bpp at that PSNR."""
    codecs = [c for c in engine.CLASSICAL if c in res.classical]
    head = (f"{res.name} ({res.modality}, {res.geometry}, {res.bits_stored} bits stored in "
            f"{res.bits_allocated}): bpp of each codec at our PSNR")
    cols = f"{'q':>4s} {'bpp':>7s} {'PSNR dB':>8s} {'SSIM':>7s} {'max err':>8s} |" + \
        "".join(f"{engine.LABELS[c]:>10s}" for c in codecs) + f" | {'smallest':<9s}"
    lines = [head, cols, "-" * len(cols)]
    for r in res.ours[model]:
        theirs = {c: engine.bpp_at(res.classical[c], r["psnr"]) for c in codecs}
        sizes = {"ours": r["bpp"], **{c: v for c, v in theirs.items() if math.isfinite(v)}}
        smallest = min(sizes, key=sizes.get) if math.isfinite(r["psnr"]) else ""
        mark = "*" if r["quality"] == quality else " "
        lines.append(f"{r['quality']:>3d}{mark} {r['bpp']:7.3f} {engine.fmt_num(r['psnr'], '8.2f')} {r['ssim']:7.4f} "
                     f"{r['max_abs_err']:8d} |" + "".join(f"{engine.fmt_num(theirs[c], '10.3f')}" for c in codecs) +
                     f" | {engine.LABELS.get(smallest, smallest):<9s}")
    lines.append("  * written to .kcd and .dcm, verified; — = outside the PSNR range that codec's lossy settings "
                 "reach (e.g. JPEG-LS with NEAR <= 255)")
    lines.append(f"  {engine.bd_line(res, model).split(': ', 1)[1]} (negative = ours smaller)")
    lines += [f"  note: {n}" for n in res.notes]
    return lines


def summary_table(results, model: str) -> list:
    """BD-rate of ours against each classical codec, per image and the mean over images."""
    head = (f"BD-rate of ours over {engine.BD_RANGE[0]:.0f}-{engine.BD_RANGE[1]:.0f} dB (negative = fewer bits than "
            f"that codec; † = curves overlap < {engine.MIN_OVERLAP:.0f} dB, width given, left out of the mean)")
    cols = f"{'image':36s} {'modality':>8s}" + "".join(f"{engine.LABELS[c]:>20s}" for c in engine.CLASSICAL)
    lines = [head, cols, "-" * len(cols)]
    for res in results:
        lines.append(f"{res.name[:36]:36s} {res.modality:>8s}" +
                     "".join(f"{res.bd_cell(model, c):>20s}" for c in engine.CLASSICAL))
    lines.append(f"{'mean':36s} {'':>8s}" + "".join(f"{engine.mean_cell(results, model, c):>20s}"
                                                    for c in engine.CLASSICAL))
    return lines


def _display(px: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A (rows, cols) or (rows, cols, 3) frame scaled to [0, 1] over the original's range, for imshow."""
    x = (px.astype(np.float64) - lo) / max(hi - lo, 1.0)
    x = np.clip(x, 0.0, 1.0)
    return x[:, :, 0] if x.shape[2] == 1 else x[:, :, :3]


def plot_error_map(path: Path, name: str, image, decoded, row: dict) -> None:
    """Original, decoded and |difference| (with a colorbar) side by side; the first frame of a multi-frame image."""
    import matplotlib  # plots only: loaded when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = image.pixels[0]
    b = decoded.pixels[0]
    lo, hi = float(image.pixels.min()), float(image.pixels.max())
    diff = np.abs(a.astype(np.int64) - b.astype(np.int64)).max(axis=2)
    cmap = "gray_r" if image.photometric == "MONOCHROME1" else "gray"
    frame = " (frame 1)" if image.frames > 1 else ""
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    axes[0].imshow(_display(a, lo, hi), cmap=cmap, vmin=0, vmax=1)
    axes[0].set_title(f"original{frame}", fontsize=9)
    axes[1].imshow(_display(b, lo, hi), cmap=cmap, vmin=0, vmax=1)
    axes[1].set_title(f"decoded, q{row['quality']}: {row['bpp']:.3f} bpp, {row['psnr']:.2f} dB, "
                      f"SSIM {row['ssim']:.4f}", fontsize=9)
    # the colour scale stops at the 99.9th percentile so that the typical error stays visible
    top = max(float(np.percentile(diff, 99.9)), 1.0)
    im = axes[2].imshow(diff, cmap="magma", vmin=0, vmax=top)
    axes[2].set_title(f"|difference| (stored units), max {row['max_abs_err']}, scale to 99.9th pct {top:g}"
                      + (", max over samples" if image.samples > 1 else ""), fontsize=9)
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{name} ({image.modality}, {engine.geometry(image)}), the .dcm written at quality {row['quality']}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)
