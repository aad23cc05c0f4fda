"""`keras-codec demo` (`make demo`): the shipped default bundle on the sample corpus's test split, or a folder.

Each image is encoded to .kcd through the edge runtime (TFLite, no Keras), decoded back to
DICOM, verified, and compared with the original per DESIGN.md's protocol.
"""
from __future__ import annotations

import time
from pathlib import Path

from keras_codec import metrics


def _sources(folder):
    if folder is not None:
        from data.readers import list_images

        folder = Path(folder)
        return [(str(p.relative_to(folder)), p) for p in list_images(folder)]
    from data.corpus import corpus

    return [(it.name, Path(it.path)) for it in corpus("test")]


def run_demo(folder=None, out_dir="out/demo", quality=None, progress=print) -> list[dict]:
    from data.readers import read_image
    from edge_runtime import runtime

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    quality = runtime.DEFAULT_QUALITY if quality is None else quality
    codec = runtime.load_codec(None)
    progress(f"bundle {codec[0].path} (model {codec[0].model_id.hex()[:16]}…), quality {quality}")
    rows = []
    header = f"{'image':36s} {'bpp':>7s} {'ratio':>7s} {'PSNR dB':>8s} {'SSIM':>7s} {'max err':>8s} {'enc s':>6s} {'dec s':>6s}"
    progress(header)
    progress("-" * len(header))
    for name, path in _sources(folder):
        stem = Path(name).name.rsplit(".", 1)[0]
        kcd, dcm = out_dir / f"{stem}.kcd", out_dir / f"{stem}.dcm"
        try:
            t0 = time.perf_counter()
            enc = runtime.encode_file(path, kcd, quality=quality, bundle=codec, force=True)
            t1 = time.perf_counter()
            runtime.decode_file(kcd, dcm, force=True, bundle=codec)
            t2 = time.perf_counter()
            runtime.verify(kcd, bundle=codec)
            orig, dec = read_image(path), read_image(dcm)
        except (ValueError, OSError) as exc:
            progress(f"{name:36s} failed: {exc}")
            continue
        m = metrics.evaluate(orig.pixels, dec.pixels, enc["pixel_bytes"], orig.bits_stored,
                             8 * orig.pixels.dtype.itemsize)
        rows.append({"image": name, **m, "encode_s": t1 - t0, "decode_s": t2 - t1})
        progress(f"{name:36s} {m['bpp']:7.3f} {m['cr']:7.1f} {m['psnr']:8.2f} {m['ssim']:7.4f} "
                 f"{m['max_abs_err']:8d} {t1 - t0:6.2f} {t2 - t1:6.2f}")
    progress(f"wrote .kcd and decoded .dcm files to {out_dir}/")
    return rows
