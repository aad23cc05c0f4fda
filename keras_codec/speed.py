"""Encode / decode speed and peak memory of our codec and the classical ones (DESIGN.md, Evaluation protocol).

Timing rule: median of ``runs`` (>= 5) runs after one warm-up run; one run is the whole encode or
decode of one image including entropy coding and file I/O:

- ours (edge runtime, TFLite, ``threads`` threads): ``runtime.encode_file`` (image -> .kcd) and
  ``runtime.decode_file`` (.kcd -> .dcm, DICOM header rebuilt from the stream's metadata block);
- classical (``keras_codec.baselines``, one thread each): encode = read the image, code every plane,
  write the codestream; decode = read the codestream, decode, write a .dcm with the source header.
  JPEG 2000 (OpenJPEG) and JPEG XL (libjxl) lossy at the dynamic-range PSNR our codec reached on
  that image, and lossless; JPEG-LS (CharLS) lossless and NEAR=2.

Peak memory: every (codec, image, encode|decode) measurement runs in a fresh (spawned) child process;
``peak_rss_mib`` is that child's peak RSS, VmHWM from /proc (whole process: interpreter and imports
included; ``ru_maxrss`` is not used because Linux carries it over from the parent across fork+exec)
and ``rss_base_mib`` its RSS just before the first run, after imports and model loading.

Used by ``keras-codec bench --speed`` and by ``benchmarks/bench_speed.py``; it lives in the package
(not under ``benchmarks/``) so that the spawned children can import it from any working folder.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

__all__ = ["COLUMNS", "image_speed", "measure", "plot", "table_lines"]

COLUMNS = ("image", "size", "codec", "mode", "bpp", "psnr", "max_abs_err", "encode_ms", "decode_ms",
           "encode_ms_min", "decode_ms_min", "runs", "threads", "peak_rss_mib_enc", "peak_rss_mib_dec",
           "rss_base_mib", "load1_start")
LIBRARIES = {"jpeg2000": "OpenJPEG", "jpegxl": "libjxl", "jpegls": "CharLS"}


def _rss_mib(key: str = "VmRSS") -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def _child(conn, job: dict):
    """One measurement: warm-up, then `runs` timed runs; sends times and peak RSS (MiB)."""
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

    return {"jpeg2000": baselines.JPEG2000, "jpegxl": baselines.JPEGXL, "jpegls": baselines.JPEGLS}[job["codec"]]()


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
        lo, hi = ref.value_range
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
    """Run one job in a fresh spawned process: {"times": [s, ...], "peak_rss_mib", "rss_base_mib"}."""
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


def image_speed(name, path, *, bundle, quality: int, runs: int, threads: int, tmp, load1: float,
                label: str = "ours (edge, TFLite)", progress=print) -> list:
    """Speed rows of one image file: ours at `quality`, then each classical configuration.

    A classical codec that cannot code this image (or reach our PSNR) is left out with a line
    saying why, instead of stopping the benchmark.
    """
    from data.readers import read_image
    from edge_runtime.runtime import pixel_stream_bytes
    from keras_codec import baselines, metrics

    path = Path(path)
    image = read_image(path)
    px = image.pixels
    samples = px.size
    size = f"{image.rows}x{image.cols}" + (f"x{image.samples}" if image.samples > 1 else "") + \
        (f"x{image.frames}f" if image.frames > 1 else "")
    stem = Path(tmp) / Path(name).name.rsplit(".", 1)[0]
    rows = []

    job = dict(src=str(path), kcd=str(stem) + ".kcd", dcm=str(stem) + "_ours.dcm", bundle=str(bundle),
               quality=quality, threads=threads, runs=runs)
    enc = measure(dict(job, kind="ours_encode"))
    dec = measure(dict(job, kind="ours_decode"))
    n_bytes = pixel_stream_bytes(Path(job["kcd"]).read_bytes())
    decoded = read_image(job["dcm"]).pixels
    our_psnr = metrics.psnr(px, decoded)
    rows.append(_row(name, size, label, f"q{quality}", n_bytes, samples, our_psnr,
                     metrics.max_abs_error(px, decoded), enc, dec, runs, threads, load1))
    progress(f"  {name}: {label} q{quality}: {our_psnr:.2f} dB, {8 * n_bytes / samples:.3f} bpp")

    # lossy parameters are chosen (untimed) on the pixels, then timed through files in children
    configs = []
    for codec in (baselines.JPEG2000(), baselines.JPEGXL()):
        try:
            target = baselines.at_psnr(codec, px, our_psnr, bits_stored=image.bits_stored)
            configs.append((codec.name, f"lossy @ {our_psnr:.1f} dB", target["param"]))
        except Exception as exc:  # noqa: BLE001 - an external codec refusing this image is a note, not a stop
            progress(f"  {name}: {LIBRARIES[codec.name]} lossy left out ({exc})")
        configs.append((codec.name, "lossless", None))
    configs += [("jpegls", "lossless", None), ("jpegls", "NEAR=2", 2)]
    for codec, mode, param in configs:
        job = dict(src=str(path), stream=str(stem) + f"_{codec}_{param}.bin", dcm=str(stem) + f"_{codec}.dcm",
                   codec=codec, param=param, threads=1, runs=runs)
        try:
            enc = measure(dict(job, kind="base_encode"))
            dec = measure(dict(job, kind="base_decode"))
        except RuntimeError as exc:
            progress(f"  {name}: {LIBRARIES[codec]} {mode} left out ({str(exc).splitlines()[0]})")
            continue
        blob = Path(job["stream"]).read_bytes()
        n_bytes = len(blob) - 4 * image.frames * image.samples  # the 4-byte plane lengths are ours, not theirs
        decoded = read_image(job["dcm"]).pixels
        rows.append(_row(name, size, f"{LIBRARIES[codec]} ({codec})", mode, n_bytes, samples,
                         metrics.psnr(px, decoded), metrics.max_abs_error(px, decoded), enc, dec, runs, 1, load1))
        progress(f"  {name}: {LIBRARIES[codec]} {mode} done")
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


TABLE = (("image", "image"), ("codec", "codec"), ("mode", "mode"), ("bpp", "bpp"), ("psnr", "PSNR dB"),
         ("max_abs_err", "max err"), ("encode_ms", "enc ms"), ("decode_ms", "dec ms"), ("threads", "thr"),
         ("peak_rss_mib_enc", "peak MiB enc"), ("peak_rss_mib_dec", "peak MiB dec"))


def table_lines(rows) -> list:
    """The speed table as aligned text lines (first three columns left-aligned)."""
    table = [tuple(h for _, h in TABLE)] + [tuple(str(r[c]) for c, _ in TABLE) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(TABLE))]
    lines = []
    for k, t in enumerate(table):
        lines.append("  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(t, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


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
