"""`keras-codec eval`: rate-distortion of a model bundle against JPEG 2000 on the test split or a folder.

Per image and quality: real .kcd bytes (bpp), PSNR, SSIM, max abs error, coded with the Keras
transform layers (the workstation side); JPEG 2000 (OpenJPEG) searched to the same PSNRs; BD-rate
per image over 40-55 dB and the mean. Writes a CSV and a PNG of the rate-distortion curves.
A preset of :mod:`keras_codec.evaluation.engine`; `keras-codec bench` adds JPEG XL, JPEG-LS and more.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from keras_codec.evaluation import engine
from keras_codec.evaluation.engine import evaluation_images  # re-exported: callers import it from here too

__all__ = ["evaluate_bundle", "evaluation_images"]


def evaluate_bundle(bundle_path, *, folder=None, qualities=None, out_dir="out/eval", progress=print,
                    with_jpeg2000=True, images=None) -> dict:
    """Our codec (Keras transforms) at every quality level against JPEG 2000 searched to our PSNRs.

    On the test split, the images under `folder`, or `images` ((name, Image) pairs) when given.

    The measuring is :func:`keras_codec.evaluation.engine.compare_image`'s (the bench with one anchor and
    the workstation coder); returns {"images": {name: {"bd_rate_vs_jpeg2000", "ours",
    "jpeg2000"}}, "mean_bd_rate", "rows", "model_id"}.
    """
    codec = engine.OurCodec(bundle_path, backend="keras")
    anchors = engine.classical_codecs(["jpeg2000"]) if with_jpeg2000 else []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, summary, results = [], {}, []
    for name, img in (evaluation_images(folder) if images is None else images):
        def measure(c, q, name=name, img=img):
            r = engine.our_point(c, img, q)
            progress(f"{name:36s} q{q:<2d} {r['bpp']:7.3f} bpp  {r['psnr']:6.2f} dB  ssim {r['ssim']:.4f}  "
                     f"max err {r['max_abs_err']}  real/est bits {r['real_over_estimate']:.4f}")
            return r

        res = engine.compare_image(name, img, [codec], anchors, levels=qualities, tol=0.05, with_ssim=True,
                                  measure=measure, progress=lambda _: None)
        results.append(res)
        rows += res.rows()
        bd = res.bd(codec.label, "jpeg2000")
        summary[name] = {"bd_rate_vs_jpeg2000": bd,
                         "ours": [(r["bpp"], r["psnr"]) for r in res.ours[codec.label]],
                         "jpeg2000": [(r["bpp"], r["psnr"]) for r in engine.pareto(res.classical.get("jpeg2000", []))]}
        progress(f"{name}: BD-rate vs JPEG 2000 (40-55 dB) {bd:+.1f} %")
    finite = [v["bd_rate_vs_jpeg2000"] for v in summary.values() if np.isfinite(v["bd_rate_vs_jpeg2000"])]
    mean_bd = float(np.mean(finite)) if finite else float("nan")
    progress(f"mean BD-rate vs JPEG 2000 over {len(finite)} images: {mean_bd:+.1f} %")
    engine.write_csv(out_dir / "eval.csv", rows)
    engine.plot_rd(out_dir / "rd_curves.png", [engine.image_panel(res, with_paper=False) for res in results],
                  ncols=max(len(results), 1))
    return {"images": summary, "mean_bd_rate": mean_bd, "rows": rows, "model_id": codec.model_id.hex()}
