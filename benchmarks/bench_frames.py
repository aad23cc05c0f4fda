"""Frame groups: multi-frame images coded with prediction from the previous decoded frame (container version 2,
codec.encode_image's default) against frame by frame (inter=False, version 1): the bits the groups save at equal PSNR
on the cine.

Images: pydicom-data's 120-frame 480x640 RGB cine color3d_jpeg_baseline.dcm (every frame), and the test split's
volumes brain2_image.nrrd (MR, 23 slices of 256², 6.5 mm) and lung2_image.nrrd (CT, 61 slices of 512², 5 mm)
from data/volumes (the set-up fetches them). Per quality: bytes, bpp (8 x pixel stream bytes / samples), PSNR
over the original's dynamic range on all samples (DESIGN.md), max error, frames coded predicted, and the
whole-image encode and decode times (one run each, through a PlanePool of --jobs workers). BD-rate of the
groups against frame by frame over 40-55 dB (keras_codec.evaluation.metrics, PCHIP). Lossless: bytes both ways (on the
cine's first --lossless-frames frames). Group length: bytes and PSNR at --group-quality for a few lengths.

    .venv-edge/bin/python benchmarks/bench_frames.py [--cases cine,brain2,lung2] [--qualities 10,12,14,16,18,20]
        [--groups 4,8,16] [--lossless-frames 24] [--jobs 2] [--out out/bench]

Prints the tables and writes out/bench/frames.csv (every point), frames_bd.csv and frames.png.
"""
from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np

BD_RANGE = (40.0, 55.0)
CASES = {"cine": "color3d_jpeg_baseline.dcm", "brain2": "brain2_image.nrrd", "lung2": "lung2_image.nrrd"}


def _image(case: str):
    from data.image import Image

    if case == "cine":
        from data.corpus import PYDICOM_DATA, corpus_path
        from data.readers import read_image

        return read_image(corpus_path(CASES[case], PYDICOM_DATA))
    from data.corpus import PYRADIOMICS, volume_path
    from data.readers import read_nrrd

    volume, _ = read_nrrd(volume_path(CASES[case], PYRADIOMICS))
    volume = np.asarray(volume)
    if volume.dtype != np.int16:
        raise ValueError(f"{CASES[case]}: expected int16 samples, got {volume.dtype}")
    return Image(pixels=np.ascontiguousarray(volume[..., None]), bits_stored=16, signed=True,
                 photometric="MONOCHROME2", modality="CT" if case == "lung2" else "MR")


def _point(image, coder, model_id, plane_map, **options) -> dict:
    from edge_runtime import bitstream as bs
    from edge_runtime.codec import decode_image, encode_image
    from edge_runtime.runtime import pixel_stream_bytes, psnr

    t0 = time.perf_counter()
    data = encode_image(image, coder=coder, model_id=model_id, plane_map=plane_map, **options)
    t1 = time.perf_counter()
    out, header = decode_image(data, coder=coder, plane_map=plane_map)
    t2 = time.perf_counter()
    pixel_bytes = pixel_stream_bytes(data)
    err = int(np.abs(out.pixels.astype(np.int64) - image.pixels.astype(np.int64)).max())
    predicted = sum(1 for m in header.frame_modes if m != bs.FRAME_INTRA)
    return {"bytes": pixel_bytes, "bpp": 8.0 * pixel_bytes / image.pixels.size, "psnr": psnr(image.pixels, out.pixels),
            "max_abs_err": err, "predicted": predicted, "group": header.group, "encode_s": t1 - t0,
            "decode_s": t2 - t1}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="cine,brain2,lung2")
    p.add_argument("--qualities", default="10,12,14,16,18,20")
    p.add_argument("--groups", default="4,8,16", help="group lengths compared at --group-quality (cine only)")
    p.add_argument("--group-quality", type=int, default=14)
    p.add_argument("--lossless-frames", type=int, default=24, help="frames of the cine coded losslessly")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="out/bench")
    args = p.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    from contextlib import nullcontext

    from data.image import Image
    from edge_runtime.pool import PlanePool
    from edge_runtime.runtime import load_codec
    from keras_codec.evaluation.metrics import bd_rate

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    qualities = [int(q) for q in args.qualities.split(",") if q]
    bundle, coder = load_codec(None)
    load = os.getloadavg()[0]
    print(f"load average at start {load:.1f} on {os.cpu_count()} CPU(s); {args.jobs} worker process(es)")
    rows, bd_rows = [], []
    with (PlanePool(bundle.path, jobs=args.jobs) if args.jobs > 1 else nullcontext()) as pool:
        plane_map = pool.map if pool is not None else None
        for case in [c for c in args.cases.split(",") if c]:
            image = _image(case)
            print(f"\n{case}: {CASES[case]}, {image.frames} frames of {image.rows}x{image.cols}, "
                  f"{image.samples} sample(s), {image.pixels.dtype}")
            print(f"{'mode':14s} {'q':>3s} {'bytes':>10s} {'bpp':>7s} {'PSNR':>7s} {'maxerr':>6s} {'pred':>5s} "
                  f"{'enc s':>6s} {'dec s':>6s}")

            def run(mode, label, img=image, **options):
                r = {"case": case, "mode": mode, "setting": label, "frames": img.frames,
                     **_point(img, coder, bundle.model_id, plane_map, **options)}
                rows.append(r)
                print(f"{mode:14s} {label:>3s} {r['bytes']:10d} {r['bpp']:7.4f} {r['psnr']:7.2f} {r['max_abs_err']:6d} "
                      f"{r['predicted']:5d} {r['encode_s']:6.1f} {r['decode_s']:6.1f}", flush=True)
                return r

            curves = {"frame by frame": [], "groups": []}
            for q in qualities:
                curves["frame by frame"].append(run("frame by frame", str(q), quality=q, inter=False))
                curves["groups"].append(run("groups", str(q), quality=q))
            a, t = curves["frame by frame"], curves["groups"]
            bd = bd_rate([r["bpp"] for r in a], [r["psnr"] for r in a], [r["bpp"] for r in t], [r["psnr"] for r in t],
                         *BD_RANGE)
            bd_rows.append({"case": case, "bd_rate_groups_vs_frame_by_frame_pct": bd,
                            "encode_s_ratio": sum(r["encode_s"] for r in t) / sum(r["encode_s"] for r in a),
                            "decode_s_ratio": sum(r["decode_s"] for r in t) / sum(r["decode_s"] for r in a)})
            print(f"BD-rate, groups against frame by frame ({BD_RANGE[0]:.0f}-{BD_RANGE[1]:.0f} dB): {bd:+.1f} %")

            n = min(args.lossless_frames, image.frames) if case == "cine" else image.frames
            sub = Image(pixels=np.ascontiguousarray(image.pixels[:n]), bits_stored=image.bits_stored,
                        signed=image.signed, photometric=image.photometric, modality=image.modality)
            lossless = [run(mode, "LL", img=sub, quality=None, max_error=0, inter=mode == "groups")
                        for mode in ("frame by frame", "groups")]
            print(f"lossless ({n} frames): groups {lossless[1]['bytes'] / lossless[0]['bytes'] - 1:+.1%} bytes")
            bd_rows[-1]["lossless_bytes_ratio"] = lossless[1]["bytes"] / lossless[0]["bytes"]
            if case == "cine":
                for g in [int(x) for x in args.groups.split(",") if x]:
                    run(f"groups G={g}", str(args.group_quality), quality=args.group_quality, group=g)

    fields = ["case", "mode", "setting", "frames", "group", "predicted", "bytes", "bpp", "psnr", "max_abs_err",
              "encode_s", "decode_s"]
    with open(out_dir / "frames.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with open(out_dir / "frames_bd.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(bd_rows[0]) if bd_rows else ["case"])
        w.writeheader()
        w.writerows(bd_rows)
    print("\nsummary")
    for r in bd_rows:
        print(f"{r['case']:8s} BD-rate {r['bd_rate_groups_vs_frame_by_frame_pct']:+6.1f} %  lossless "
              f"{r['lossless_bytes_ratio'] - 1:+6.1%}  encode time x{r['encode_s_ratio']:.2f}  "
              f"decode time x{r['decode_s_ratio']:.2f}")
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    _plot(rows, out_dir / "frames.png")
    print(f"wrote {out_dir / 'frames.csv'}, {out_dir / 'frames_bd.csv'}, {out_dir / 'frames.png'}")
    return 0


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 4), squeeze=False)
    for ax, case in zip(axes[0], cases):
        for mode, style in (("frame by frame", "o-"), ("groups", "s-")):
            pts = sorted((r for r in rows if r["case"] == case and r["mode"] == mode and np.isfinite(r["psnr"])),
                         key=lambda r: r["bpp"])
            ax.plot([r["bpp"] for r in pts], [r["psnr"] for r in pts], style, label=mode)
        ax.set_title(case)
        ax.set_xlabel("bpp")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
