"""Throughput of folder batches: the local batch mode against the Dask path, same folder.

Codes a folder of synthetic 12-bit DICOMs (--images of --size x --size, a smooth gradient, a disc
and noise, like a CT slice) with the default bundle, four ways:

  local -j1     edge_runtime.batch, in this process
  local -j2     edge_runtime.batch, 2 spawned worker processes
  dask 1        edge_runtime.cluster on a LocalCluster of 1 worker process (1 thread)
  dask 2        the same with 2 worker processes

each into a fresh OUTDIR (encode; then decode of the local -j1 streams to PNG), --runs times, the
median kept. Time is the wall time of the encode_folder / decode_folder call: for local -j2 it
includes spawning the workers and loading the codec in each; for Dask the cluster is started
before (a standing cluster, as on Kubernetes or Slurm; its start time is printed apart) and each
run connects a client, and the workers load the codec on their first task of each run (the cache
is per worker, so later runs reuse it: the first run is a warm-up and not timed). Images/s and MB/s
are over the input files (10^6 bytes). Every Dask output is checked byte for byte against local -j1.

    .venv-edge/bin/python benchmarks/bench_cluster.py                 # 64 images of 256 x 256
    .venv-edge/bin/python benchmarks/bench_cluster.py --images 200 --size 512 --runs 5

Prints a table and writes out/bench/cluster.csv and cluster.png (images/s per mode and command).
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from data.image import Image  # noqa: E402
from data.writers import write_dicom  # noqa: E402
from edge_runtime import batch  # noqa: E402


def make_folder(folder: Path, n: int, size: int) -> int:
    rng = np.random.default_rng(17)
    r, c = np.mgrid[0:size, 0:size]
    disc = (r - size / 2) ** 2 + (c - size / 2) ** 2 < (size / 4) ** 2
    for i in range(n):
        x = 600 + 3 * r + 2 * c + (900 + 10 * i) * disc + rng.normal(0, 8, (size, size))
        px = np.clip(np.round(x), 0, 4095).astype(np.uint16)[None, :, :, None]
        write_dicom(folder / f"im{i:04d}.dcm", Image(pixels=px, bits_stored=12, signed=False, modality="CT"))
    return sum(p.stat().st_size for p in folder.iterdir())


def outputs(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != batch.SUMMARY_NAME}


def timed(fn, runs: int, work: Path) -> tuple:
    """Median and all wall times of ``fn(outdir)`` over ``runs`` fresh output folders (after one warm-up)."""
    times, last = [], None
    for i in range(runs + 1):
        out = work / f"run{time.time_ns()}"
        t0 = time.perf_counter()
        s = fn(out)
        dt = time.perf_counter() - t0
        if s["failed"]:
            raise SystemExit(f"{s['failed']} files failed: {s['failures'][:3]}")
        if i:
            times.append(dt)
        if last is not None:
            shutil.rmtree(last)
        last = out
    return statistics.median(times), times, last


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quality", type=int, default=17)
    ap.add_argument("--out", default=str(ROOT / "out" / "bench" / "cluster.csv"))
    args = ap.parse_args(argv)
    import distributed

    from edge_runtime.bundle import default_bundle_path

    bundle = str(default_bundle_path())
    work = Path(tempfile.mkdtemp(prefix="bench_cluster."))
    rows = []
    try:
        src = work / "in"
        src.mkdir()
        mb_in = make_folder(src, args.images, args.size) / 1e6
        ref_dir = work / "ref"
        batch.encode_folder(src, ref_dir, encode_options={"quality": args.quality}, jobs=1, bundle=bundle)
        ref, mb_kcd = outputs(ref_dir), sum(p.stat().st_size for p in ref_dir.glob("*.kcd")) / 1e6

        def measure(label, enc, dec, check):
            for kind, fn, mb in (("encode", enc, mb_in), ("decode", dec, mb_kcd)):
                med, times, last = timed(fn, args.runs, work)
                if kind == "encode" and check:
                    assert outputs(last) == ref, f"{label}: streams differ from the local batch's"
                shutil.rmtree(last)
                rows.append({"mode": label, "command": kind, "images": args.images, "size": args.size,
                             "mb_in": round(mb, 3), "seconds": round(med, 3),
                             "images_per_s": round(args.images / med, 2), "mb_per_s": round(mb / med, 3),
                             "runs": ";".join(f"{t:.3f}" for t in times)})
                print(f"  {label:10s} {kind}: {med:.3f} s", flush=True)

        opts = {"quality": args.quality}
        for jobs in (1, 2):
            measure(f"local -j{jobs}",
                    lambda o, j=jobs: batch.encode_folder(src, o, encode_options=opts, jobs=j, bundle=bundle),
                    lambda o, j=jobs: batch.decode_folder(ref_dir, o, fmt="png", jobs=j, bundle=bundle), False)
        for n in (1, 2):
            t0 = time.perf_counter()
            with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                          dashboard_address="127.0.0.1:0") as cl:
                print(f"  LocalCluster of {n} worker(s) started in {time.perf_counter() - t0:.2f} s", flush=True)
                a = cl.scheduler_address
                measure(f"dask {n}",
                        lambda o: batch.encode_folder(src, o, encode_options=opts, bundle=bundle, scheduler=a),
                        lambda o: batch.decode_folder(ref_dir, o, fmt="png", bundle=bundle, scheduler=a), True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.images} images of {args.size} x {args.size}, quality {args.quality}, median of {args.runs} runs, "
          f"Python {platform.python_version()}, {batch.default_jobs()} CPUs\n")
    print("| mode | command | s | images/s | MB/s in |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['command']} | {r['seconds']:.3f} | {r['images_per_s']:.1f} | {r['mb_per_s']:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\nwrote {out}")
    png = plot(rows, out.with_suffix(".png"), f"{args.images} images of {args.size}², quality {args.quality}")
    if png is not None:
        print(f"wrote {png}")
    return 0


def plot(rows: list, path: Path, title: str):
    """Grouped bars of images/s per mode, encode beside decode; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, command in enumerate(("encode", "decode")):
        rates = [next((r["images_per_s"] for r in rows if r["mode"] == m and r["command"] == command), 0.0)
                 for m in modes]
        xs = [i + (k - 0.5) * 0.38 for i in range(len(modes))]
        bars = ax.bar(xs, rates, width=0.38, label=command)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(modes)), modes)
    ax.set(ylabel="images/s (median)", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
