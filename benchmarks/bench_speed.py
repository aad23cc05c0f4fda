"""Encode / decode speed of the edge runtime against OpenJPEG and CharLS (DESIGN.md, Evaluation protocol).

Timing rule: median of ``--runs`` (>= 5) runs after one warm-up run; one run is the whole encode or
decode of one image including entropy coding and file I/O:

- ours (edge runtime, TFLite, ``--threads`` threads): ``runtime.encode_file`` (DICOM -> .kcd) and
  ``runtime.decode_file`` (.kcd -> .dcm, DICOM header rebuilt from the stream's metadata block);
- baselines (``keras_codec.baselines``, one thread each): encode = read the DICOM, code every plane,
  write the codestream; decode = read the codestream, decode, write a .dcm with the source header.
  JPEG 2000 (OpenJPEG) lossy at the dynamic-range PSNR our codec reached on that image, and
  lossless; JPEG-LS (CharLS) lossless and NEAR=2.

Images: the 512x512 CT ``explicit_VR-UN.dcm`` and the 1760x1760 CR ``RG3_UNCR.dcm`` from the test
split of ``data.corpus``. Peak memory: every (codec, image, encode|decode) measurement runs in a
fresh (spawned) child process; ``peak_rss_mib`` is that child's peak RSS, VmHWM from /proc (whole
process: interpreter and imports included; ``ru_maxrss`` is not used because Linux carries it
over from the parent across fork+exec) and ``rss_base_mib`` its RSS just before the
first run, after imports and model loading. The load average is printed and stored, since the
machine may be busy.

Runs in the workstation venv (the baselines need imagecodecs; ours never imports TensorFlow):

    .venv/bin/python benchmarks/bench_speed.py [--bundle B] [--quality 12] [--runs 5] [--threads 2]

Prints a table and writes out/bench/speed.csv and out/bench/speed.png. Exits 2 when the bundle has
no TFLite graphs.
"""
from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IMAGES = ("explicit_VR-UN.dcm", "RG3_UNCR.dcm")
COLUMNS = ("image", "size", "codec", "mode", "bpp", "psnr", "max_abs_err", "encode_ms", "decode_ms",
           "encode_ms_min", "decode_ms_min", "runs", "threads", "peak_rss_mib_enc", "peak_rss_mib_dec",
           "rss_base_mib", "load1_start")


def _rss_mib(key: str = "VmRSS") -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def _child(conn, job: dict):
    """One measurement: warm-up, then `runs` timed runs; sends times and peak RSS (KiB on Linux)."""
    try:
        os.environ["OMP_NUM_THREADS"] = str(job["threads"])
        fn = {"ours_encode": _ours_encode, "ours_decode": _ours_decode,
              "base_encode": _base_encode, "base_decode": _base_decode}[job["kind"]]
        run_once = fn(job)  # setup (imports, model loading) is not timed
        base = _rss_mib()
        run_once()  # warm-up
        times = []
        for _ in range(job["runs"]):
            t0 = time.perf_counter()
            run_once()
            times.append(time.perf_counter() - t0)
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a spawned child would
        # report the parent's RSS at fork time when that is larger than its own peak.
        peak = _rss_mib("VmHWM")
        conn.send({"times": times, "peak_rss_mib": peak, "rss_base_mib": base})
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        import traceback

        conn.send({"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})


def _ours_encode(job):
    from edge_runtime import runtime

    codec = runtime.load_codec(job["bundle"], num_threads=job["threads"])
    src, out = Path(job["src"]), Path(job["kcd"])
    return lambda: runtime.encode_file(src, out, quality=job["quality"], bundle=codec, force=True)


def _ours_decode(job):
    from edge_runtime import runtime

    codec = runtime.load_codec(job["bundle"], num_threads=job["threads"])
    src, out = Path(job["kcd"]), Path(job["dcm"])
    return lambda: runtime.decode_file(src, out, bundle=codec, force=True)


def _baseline(job):
    from keras_codec import baselines

    if job["codec"] == "jpeg2000":
        return baselines.JPEG2000()
    return baselines.JPEGLS()


def _base_encode(job):
    from data.readers import read_image

    codec = _baseline(job)
    src, out = Path(job["src"]), Path(job["stream"])

    def run():
        image = read_image(src)
        px = image.pixels
        parts = []
        for f in range(image.frames):
            for s in range(image.samples):
                data = codec.encode(np.ascontiguousarray(px[f, :, :, s]), job["param"], image.bits_stored)
                parts.append(len(data).to_bytes(4, "little") + data)
        out.write_bytes(b"".join(parts))
    return run


def _base_decode(job):
    from data.image import Image
    from data.readers import read_image
    from data.writers import write_dicom

    codec = _baseline(job)
    ref = read_image(Path(job["src"]))
    src, out = Path(job["stream"]), Path(job["dcm"])

    def run():
        blob = src.read_bytes()
        planes, pos = [], 0
        while pos < len(blob):
            n = int.from_bytes(blob[pos:pos + 4], "little")
            planes.append(codec.decode(blob[pos + 4:pos + 4 + n], ref.pixels.dtype, ref.bits_stored))
            pos += 4 + n
        # clipped to the stored range (DESIGN.md): JPEG-LS NEAR>0 may overshoot MAXVAL = 2**16-1 by NEAR
        lo, hi = (-(1 << (ref.bits_stored - 1)), (1 << (ref.bits_stored - 1)) - 1) if ref.signed else \
            (0, (1 << ref.bits_stored) - 1)
        planes = [np.clip(q, lo, hi).astype(q.dtype) for q in planes]
        px = np.stack(planes).reshape(ref.frames, ref.samples, ref.rows, ref.cols).transpose(0, 2, 3, 1)
        image = Image(pixels=np.ascontiguousarray(px), bits_stored=ref.bits_stored, signed=ref.signed,
                      photometric=ref.photometric, modality=ref.modality, dataset=ref.dataset)
        if job["param"] is None:
            write_dicom(out, image, overwrite=True)
        else:
            write_dicom(out, image, lossy=True, ratio=2.0, method=job["codec"].upper(), overwrite=True)
    return run


def measure(job: dict) -> dict:
    ctx = mp.get_context("spawn")
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child, job))
    proc.start()
    child.close()
    result = conn.recv() if conn.poll(3600) else {"error": "no result within an hour"}
    proc.join(60)
    if "error" in result:
        raise RuntimeError(f"{job['kind']} {job.get('codec', 'ours')} on {Path(job['src']).name}: "
                           f"{result['error']}\n{result.get('trace', '')}")
    return result


def _summarize(times):
    return 1000.0 * float(np.median(times)), 1000.0 * float(np.min(times))


def bench_image(item, args, tmp: Path, load1: float) -> list:
    from data.corpus import load
    from data.readers import read_image
    from keras_codec import baselines, metrics

    image = load(item)
    px = image.pixels
    samples = px.size
    size = f"{image.rows}x{image.cols}" + (f"x{image.frames}" if image.frames > 1 else "")
    stem = tmp / Path(item.name).stem
    rows = []

    # ours
    job = dict(src=item.path, kcd=str(stem) + ".kcd", dcm=str(stem) + "_ours.dcm", bundle=args.bundle,
               quality=args.quality, threads=args.threads, runs=args.runs)
    enc = measure(dict(job, kind="ours_encode"))
    dec = measure(dict(job, kind="ours_decode"))
    from edge_runtime.runtime import _pixel_stream_bytes

    n_bytes = _pixel_stream_bytes(Path(job["kcd"]).read_bytes())
    decoded = read_image(job["dcm"]).pixels
    our_psnr = metrics.psnr(px, decoded)
    rows.append(_row(item.name, size, "ours (edge, TFLite)", f"q{args.quality}", n_bytes, samples, our_psnr,
                     metrics.max_abs_error(px, decoded), enc, dec, args.runs, args.threads, load1))
    print(f"  {item.name}: ours q{args.quality}: {our_psnr:.2f} dB, {8 * n_bytes / samples:.3f} bpp", flush=True)

    # baselines: parameter chosen (untimed) on the pixels, then timed through files in children
    target = baselines.at_psnr(baselines.JPEG2000(), px, our_psnr, bits_stored=image.bits_stored)
    configs = [("jpeg2000", "OpenJPEG", f"lossy @ {our_psnr:.1f} dB", target["param"]),
               ("jpeg2000", "OpenJPEG", "lossless", None),
               ("jpegls", "CharLS", "lossless", None),
               ("jpegls", "CharLS", "NEAR=2", 2)]
    for codec, label, mode, param in configs:
        job = dict(src=item.path, stream=str(stem) + f"_{codec}_{param}.bin", dcm=str(stem) + f"_{codec}.dcm",
                   codec=codec, param=param, threads=1, runs=args.runs)
        enc = measure(dict(job, kind="base_encode"))
        dec = measure(dict(job, kind="base_decode"))
        blob = Path(job["stream"]).read_bytes()
        n_bytes = len(blob) - 4 * image.frames * image.samples  # the 4-byte plane lengths are ours, not theirs
        decoded = read_image(job["dcm"]).pixels
        rows.append(_row(item.name, size, f"{label} ({codec})", mode, n_bytes, samples, metrics.psnr(px, decoded),
                         metrics.max_abs_error(px, decoded), enc, dec, args.runs, 1, load1))
        print(f"  {item.name}: {label} {mode} done", flush=True)
    return rows


def _row(name, size, codec, mode, n_bytes, samples, psnr, err, enc, dec, runs, threads, load1):
    e_med, e_min = _summarize(enc["times"])
    d_med, d_min = _summarize(dec["times"])
    return {"image": name, "size": size, "codec": codec, "mode": mode, "bpp": round(8.0 * n_bytes / samples, 4),
            "psnr": round(float(psnr), 2), "max_abs_err": int(err), "encode_ms": round(e_med, 1),
            "decode_ms": round(d_med, 1), "encode_ms_min": round(e_min, 1), "decode_ms_min": round(d_min, 1),
            "runs": runs, "threads": threads, "peak_rss_mib_enc": round(enc["peak_rss_mib"], 1),
            "peak_rss_mib_dec": round(dec["peak_rss_mib"], 1),
            "rss_base_mib": round(max(enc["rss_base_mib"], dec["rss_base_mib"]), 1), "load1_start": round(load1, 2)}


def print_table(rows):
    cols = ("image", "codec", "mode", "bpp", "psnr", "max_abs_err", "encode_ms", "decode_ms", "threads",
            "peak_rss_mib_enc", "peak_rss_mib_dec")
    head = ("image", "codec", "mode", "bpp", "PSNR dB", "max err", "enc ms", "dec ms", "thr", "peak MiB enc",
            "peak MiB dec")
    table = [head] + [tuple(str(r[c]) for c in cols) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(cols))]
    for k, t in enumerate(table):
        print("  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(t, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def plot(rows, path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = list(dict.fromkeys(r["image"] for r in rows))
    fig, axes = plt.subplots(1, len(images), figsize=(6.5 * len(images), 4.8), squeeze=False)
    for ax, name in zip(axes[0], images):
        sub = [r for r in rows if r["image"] == name]
        labels = [f"{r['codec'].split(' (')[0]}\n{r['mode']}" for r in sub]
        x = np.arange(len(sub))
        ax.bar(x - 0.2, [r["encode_ms"] for r in sub], 0.4, label="encode")
        ax.bar(x + 0.2, [r["decode_ms"] for r in sub], 0.4, label="decode")
        ax.set_yscale("log")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylabel("median ms (file to file)")
        ax.set_title(f"{name} ({sub[0]['size']})")
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
