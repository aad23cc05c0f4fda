"""The bench's near-lossless and lossless section: our codec with a max error D against JPEG-LS NEAR = D.

A preset of :mod:`keras_codec.evaluation.engine`, one of :data:`keras_codec.evaluation.bench.SECTIONS`.

For every image and every bundle with a residual model: bpp (real pixel-stream bytes), the
max error reached (checked <= D) and PSNR at D in BOUNDS, beside CharLS JPEG-LS with
NEAR = D (the same guarantee); lossless (D = 0) also beside JPEG 2000 and JPEG XL lossless;
encode and decode time at D = 0 for ours and JPEG-LS (one run each, after a warm-up for
JPEG-LS). Writes bounded.csv and bounded.png under the bench's output folder.
"""
from __future__ import annotations

import math
import time

import numpy as np

from edge_runtime.codec import encode_image
from edge_runtime.runtime import pixel_stream_bytes
from keras_codec.evaluation import baselines, metrics
from keras_codec.evaluation.engine import fmt_num, fmt_pct, write_csv

__all__ = ["BOUNDS", "markdown", "measure_image", "near_lossless_section", "plot"]

BOUNDS = (0, 1, 2, 4, 8)


def _ours(model, image, d: int) -> dict:
    t0 = time.perf_counter()
    data = encode_image(image, coder=model.coder, model_id=model.model_id, quality=None, max_error=d,
                        tile=int(model.bundle.manifest.get("tile", 2048)))
    t1 = time.perf_counter()
    decoded = model.decode(data)
    t2 = time.perf_counter()
    err = metrics.max_abs_error(image.pixels, decoded.pixels)
    if err > d:
        raise RuntimeError(f"max error {err} > D = {d}: the bound is broken")
    return {"bpp": metrics.bpp(pixel_stream_bytes(data), image.pixels.size), "max_abs_err": err,
            "psnr": metrics.psnr(image.pixels, decoded.pixels), "encode_s": t1 - t0, "decode_s": t2 - t1}


def measure_image(name, image, models, bounds=BOUNDS, progress=print) -> list:
    """Rows (image, modality, D, codec, bpp, max_abs_err, psnr, encode_s, decode_s) for one image."""
    rows = []
    base = {"image": name, "modality": image.modality}
    for d in bounds:
        r = baselines.measure(baselines.JPEGLS(), image.pixels, d, image.bits_stored, repeats=2)
        rows.append({**base, "D": d, "codec": "jpegls", **{k: r[k] for k in
                                                           ("bpp", "max_abs_err", "psnr", "encode_s", "decode_s")}})
        for model in models:
            ours = _ours(model, image, d)
            rows.append({**base, "D": d, "codec": model.label, **ours})
            progress(f"{name:36s} D={d}: {model.label} {ours['bpp']:.3f} bpp ({ours['encode_s']:.1f} s / "
                     f"{ours['decode_s']:.1f} s), JPEG-LS NEAR={d} {r['bpp']:.3f}")
    for codec in (baselines.JPEG2000(), baselines.JPEGXL()):
        try:
            bpp = baselines.lossless_bpp(image.pixels, image.bits_stored, [codec])[codec.name]
        except Exception as exc:  # noqa: BLE001 - an external codec refusing this input is a note
            progress(f"{name:36s} {codec.name} lossless left out ({exc})")
            bpp = math.nan
        rows.append({**base, "D": 0, "codec": codec.name, "bpp": bpp, "max_abs_err": 0, "psnr": math.inf,
                     "encode_s": math.nan, "decode_s": math.nan})
    return rows


def _bpp(rows, image, d, codec) -> float:
    return next((r["bpp"] for r in rows if r["image"] == image and r["D"] == d and r["codec"] == codec), math.nan)


def markdown(rows, labels, bounds=BOUNDS) -> str:
    images = list(dict.fromkeys(r["image"] for r in rows))
    lines = ["bpp with every pixel within D of the original (max error checked on decode), against JPEG-LS "
             "with NEAR = D; Δ = ours / JPEG-LS − 1:", "",
             "| image | " + " | ".join(f"D={d} ours / JPEG-LS (Δ)" for d in bounds) + " |",
             "|---|" + "---|" * len(bounds)]
    for label in labels:
        for im in images:
            cells = []
            for d in bounds:
                a, b = _bpp(rows, im, d, label), _bpp(rows, im, d, "jpegls")
                cells.append(f"{fmt_num(a, '.3f')} / {fmt_num(b, '.3f')} ({fmt_pct(100 * (a / b - 1))})")
            lines.append(f"| {im} ({label}) | " + " | ".join(cells) + " |")
        cells = []
        for d in bounds:
            a = np.mean([_bpp(rows, im, d, label) for im in images])
            b = np.mean([_bpp(rows, im, d, "jpegls") for im in images])
            cells.append(f"**{a:.3f} / {b:.3f} ({fmt_pct(100 * (a / b - 1))})**")
        lines.append(f"| **mean** ({label}) | " + " | ".join(cells) + " |")
    lines += ["", "Lossless (D = 0) bpp and times at D = 0 (ours: encode with the base-quality search, and "
              "decode, in memory; JPEG-LS: CharLS, median of 2 runs):", "",
              "| image | ours | JPEG-LS | JPEG 2000 | JPEG XL | ours enc / dec ms | JPEG-LS enc / dec ms |",
              "|---|---|---|---|---|---|---|"]
    for label in labels:
        for im in images:
            o = next(r for r in rows if r["image"] == im and r["D"] == 0 and r["codec"] == label)
            j = next(r for r in rows if r["image"] == im and r["D"] == 0 and r["codec"] == "jpegls")
            lines.append(f"| {im} ({label}) | " + " | ".join(fmt_num(_bpp(rows, im, 0, c), ".3f") for c in
                                                              (label, "jpegls", "jpeg2000", "jpegxl")) +
                         f" | {1e3 * o['encode_s']:.0f} / {1e3 * o['decode_s']:.0f} | "
                         f"{1e3 * j['encode_s']:.1f} / {1e3 * j['decode_s']:.1f} |")
        means = [np.nanmean([_bpp(rows, im, 0, c) for im in images]) for c in (label, "jpegls", "jpeg2000", "jpegxl")]
        lines.append(f"| **mean** ({label}) | " + " | ".join(f"**{m:.3f}**" for m in means) + " | | |")
    return "\n".join(lines)


def plot(rows, labels, path, bounds=BOUNDS) -> None:
    import matplotlib  # plots only: loaded when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = list(dict.fromkeys(r["image"] for r in rows))
    fig, axes = plt.subplots(1, len(images), figsize=(3.6 * len(images), 3.4), squeeze=False)
    for ax, im in zip(axes[0], images):
        for label in labels:
            ax.plot(bounds, [_bpp(rows, im, d, label) for d in bounds], "o-", label=f"ours ({label})")
        ax.plot(bounds, [_bpp(rows, im, d, "jpegls") for d in bounds], "d:", label="JPEG-LS NEAR=D")
        for codec, marker in (("jpeg2000", "s"), ("jpegxl", "^")):
            ax.plot([0], [_bpp(rows, im, 0, codec)], marker, label=f"{codec} lossless")
        ax.set_title(im, fontsize=8)
        ax.set_xlabel("max error D")
        ax.set_ylabel("bpp")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def near_lossless_section(ctx) -> str:
    """The bench section (see keras_codec.evaluation.bench.SECTIONS): bounded.csv, bounded.png and a markdown table."""
    models = [m for m in ctx.models if m.bundle.residual is not None]
    for m in ctx.models:
        if m.bundle.residual is None:
            ctx.progress(f"near-lossless: {m.label} has no residual model; left out")
    if not models:
        return ""
    rows = []
    for name, _path, image in ctx.sources:
        try:
            rows += measure_image(name, image, models, progress=ctx.progress)
        except (ValueError, RuntimeError) as exc:
            ctx.progress(f"near-lossless: {name} left out ({exc})")
    if not rows:
        return ""
    labels = [m.label for m in models]
    write_csv(ctx.out_dir / "bounded.csv", rows)
    plot(rows, labels, ctx.out_dir / "bounded.png")
    return markdown(rows, labels)
