"""Encode / decode speed of the edge runtime against OpenJPEG, libjxl and CharLS (DESIGN.md, Evaluation protocol).

The measurement itself (timing rule, fresh child process per measurement, peak RSS, the codec
configurations) is :mod:`keras_codec.speed`, shared with ``keras-codec bench --speed``; this script
runs it on the 512x512 CT ``explicit_VR-UN.dcm`` and the 1760x1760 CR ``RG3_UNCR.dcm`` from the test
split of ``data.corpus``. The load average is printed and stored, since the machine may be busy.

Runs in the workstation venv (the baselines need imagecodecs; ours never imports TensorFlow):

    .venv/bin/python benchmarks/bench_speed.py [--bundle B] [--quality 12] [--runs 5] [--threads 2]

Prints a table and writes out/bench/speed.csv and out/bench/speed.png. Exits 2 when the bundle has
no TFLite graphs.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from keras_codec.speed import COLUMNS, image_speed, plot, table_lines  # noqa: E402

IMAGES = ("explicit_VR-UN.dcm", "RG3_UNCR.dcm")


def bench_image(item, args, tmp: Path, load1: float) -> list:
    return image_speed(item.name, item.path, bundle=args.bundle, quality=args.quality, runs=args.runs,
                       threads=args.threads, tmp=tmp, load1=load1, progress=lambda s: print(s, flush=True))


def print_table(rows):
    print("\n".join(table_lines(rows)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(ROOT / "edge_runtime" / "models" / "default"),
                   help="model bundle with encoder.tflite / decoder.tflite (default: the shipped one)")
    p.add_argument("--quality", type=int, default=12, help="our quality level (default 12)")
    p.add_argument("--runs", type=int, default=5, help="timed runs after one warm-up (>= 5)")
    p.add_argument("--threads", type=int, default=2, help="TFLite threads for our codec (default 2)")
    p.add_argument("--images", nargs="+", default=list(IMAGES), help="test-split file names")
    p.add_argument("--out", default=str(ROOT / "out" / "bench"))
    args = p.parse_args(argv)
    if args.runs < 5:
        p.error("DESIGN.md's timing rule asks for at least 5 runs")

    from edge_runtime.bundle import InvalidBundleError, load_bundle
    from edge_runtime.tflite_runner import tflite_paths

    try:
        tflite_paths(load_bundle(args.bundle))
    except InvalidBundleError as exc:
        print(f"bench_speed: {exc}", file=sys.stderr)
        print("bench_speed: the edge speed benchmark needs a bundle with TFLite graphs; pass --bundle", file=sys.stderr)
        return 2

    from data.corpus import corpus

    items = {i.name: i for i in corpus(split="test")}
    missing = [n for n in args.images if n not in items]
    if missing:
        print(f"bench_speed: {', '.join(missing)} not in the test split of data.corpus", file=sys.stderr)
        return 2
    load_start = os.getloadavg()
    print(f"bench_speed: bundle {args.bundle}, quality {args.quality}, median of {args.runs} runs after a warm-up, "
          f"{os.cpu_count()} CPUs, load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as tmp:
        for name in args.images:
            rows += bench_image(items[name], args, Path(tmp), os.getloadavg()[0])
    load_end = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "speed.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    note = (f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end; ours: {args.threads} TFLite "
            f"threads, baselines 1 thread; peak RSS = VmHWM of a fresh child per measurement")
    plot(rows, out / "speed.png", f"bench_speed, {Path(args.bundle).name} q{args.quality}; {note}")
    print()
    print_table(rows)
    print(f"\n{note}\nwrote {out / 'speed.csv'} and {out / 'speed.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
