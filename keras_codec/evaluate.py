"""`keras-codec eval`: rate-distortion of a model bundle against JPEG 2000 on the test split or a folder.

Per image and quality: real .kcd bytes (bpp), PSNR, SSIM, max abs error; JPEG 2000 (OpenJPEG)
searched to the same PSNR; BD-rate per image over 40-55 dB and the mean. Writes a CSV and a
PNG of the rate-distortion curves.
"""
from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path

import numpy as np

from keras_codec import metrics


def workstation_coder(bundle):
    """PlaneCoder over the Keras transform layers for a loaded bundle."""
    from edge_runtime.codec import PlaneCoder
    from keras_codec.config import CodecConfig
    from keras_codec.models.wavelet import WaveletTransforms, load_postfilter

    cfg = CodecConfig.from_dict(bundle.manifest["config"])
    params = bundle.manifest["codec"]
    names = params.get("transforms", [cfg.wavelet.wavelet])
    transforms = {n: WaveletTransforms(dataclasses.replace(cfg.wavelet, wavelet=n),
                                       postfilter=load_postfilter(bundle, n)) for n in names}
    return PlaneCoder(params, bundle.coding, transforms)


def evaluation_images(folder=None):
    """(name, Image) pairs: the corpus test split, or every readable image under `folder`."""
    if folder is None:
        from data.corpus import corpus, load

        return [(it.name, load(it)) for it in corpus("test")]
    from data.readers import list_images, read_image

    return [(str(p.relative_to(folder)), read_image(p)) for p in list_images(folder)]


def evaluate_bundle(bundle_path, *, folder=None, qualities=None, out_dir="out/eval", progress=print,
                    with_jpeg2000=True) -> dict:
    from edge_runtime.bitstream import parse
    from edge_runtime.bundle import load_bundle
    from edge_runtime.codec import QUALITY_LEVELS, decode_image, encode_image
    from keras_codec.baselines import JPEG2000, at_psnr

    bundle = load_bundle(bundle_path)
    coder = workstation_coder(bundle)
    qualities = list(qualities or QUALITY_LEVELS)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, summary = [], {}
    for name, img in evaluation_images(folder):
        px = img.pixels
        ours, j2k = [], []
        for q in qualities:
            t0 = time.perf_counter()
            st = {}
            data = encode_image(img, coder=coder, model_id=bundle.model_id, quality=q, stats=st)
            t1 = time.perf_counter()
            dec, _ = decode_image(data, coder=coder, model_ids=[bundle.model_id])
            t2 = time.perf_counter()
            m = metrics.evaluate(px, dec.pixels, len(data), img.bits_stored, 8 * px.dtype.itemsize)
            # the entropy-coded payload (tile streams) against the model's estimate of it;
            # the container header (geometry, normalization, tile table, CRC) is counted in bpp
            payload = sum(len(t) for t in parse(data)[1])
            real_over_est = 8 * payload / st["estimated_bits"]
            row = {"image": name, "codec": "keras_codec", "quality": q, **m, "real_over_estimate": real_over_est,
                   "encode_s": t1 - t0, "decode_s": t2 - t1}
            rows.append(row)
            ours.append((m["bpp"], m["psnr"]))
            progress(f"{name:36s} q{q:<2d} {m['bpp']:7.3f} bpp  {m['psnr']:6.2f} dB  ssim {m['ssim']:.4f}  "
                     f"max err {m['max_abs_err']}  real/est bits {real_over_est:.4f}")
            if with_jpeg2000 and np.isfinite(m["psnr"]):
                try:
                    r = at_psnr(JPEG2000(), _as_planes(px), m["psnr"], bits_stored=img.bits_stored)
                except ValueError:
                    continue
                rows.append({"image": name, "codec": "jpeg2000", "quality": q, "bpp": r["bpp"],
                             "psnr": r["psnr"], "ssim": r.get("ssim"), "max_abs_err": r.get("max_abs_err"),
                             "encode_s": r.get("encode_s"), "decode_s": r.get("decode_s")})
                j2k.append((r["bpp"], r["psnr"]))
        bd = float("nan")
        if len(j2k) >= 2:
            a, b = np.array(j2k), np.array(ours)
            bd = metrics.bd_rate(a[:, 0], a[:, 1], b[:, 0], b[:, 1], 40.0, 55.0)
        summary[name] = {"bd_rate_vs_jpeg2000": bd, "ours": ours, "jpeg2000": j2k}
        progress(f"{name}: BD-rate vs JPEG 2000 (40-55 dB) {bd:+.1f} %")
    finite = [v["bd_rate_vs_jpeg2000"] for v in summary.values() if np.isfinite(v["bd_rate_vs_jpeg2000"])]
    mean_bd = float(np.mean(finite)) if finite else float("nan")
    progress(f"mean BD-rate vs JPEG 2000 over {len(finite)} images: {mean_bd:+.1f} %")
    _write_csv(out_dir / "eval.csv", rows)
    _plot(out_dir / "rd_curves.png", summary)
    return {"images": summary, "mean_bd_rate": mean_bd, "rows": rows, "model_id": bundle.model_id.hex()}


def _as_planes(px: np.ndarray) -> np.ndarray:
    """(frames, rows, cols, samples) -> what the baselines take: 2-D, (r, c, s) or (f, r, c, s)."""
    if px.shape[0] == 1:
        return px[0, :, :, 0] if px.shape[3] == 1 else px[0]
    return px


def _write_csv(path: Path, rows: list) -> None:
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _plot(path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(summary), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    for ax, (name, s) in zip(axes[0], summary.items()):
        for key, label, style in (("ours", "keras_codec", "o-"), ("jpeg2000", "JPEG 2000", "s--")):
            pts = np.array([p for p in s[key] if np.isfinite(p[1])])
            if len(pts):
                ax.plot(pts[:, 0], pts[:, 1], style, ms=3, label=label)
        ax.set_title(f"{name}\nBD-rate {s['bd_rate_vs_jpeg2000']:+.1f} %", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("bpp (log scale)")
        ax.set_ylabel("PSNR (dB, dynamic range)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
