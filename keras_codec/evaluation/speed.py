"""Encode / decode speed and peak memory of our codec and the classical ones (DESIGN.md, Evaluation protocol).

Two ways to time, both in fresh processes so that peak memory belongs to one measurement:

- :func:`measure`, warm and in-process: a spawned child sets up (imports, model loading: not
  timed), warms up (runs until WARMUP_S have passed, at least once: a process that decodes image after
  image has our decoder's refinement helper ready by then, edge_runtime.overlap), then ``runs`` timed
  runs; one run is the whole encode or decode of
  one file including entropy coding and file I/O. ``peak_rss_mib`` is the child's VmHWM from /proc
  (interpreter and imports included; ``ru_maxrss`` is not used because Linux carries it over from
  the parent across fork+exec), ``rss_base_mib`` its RSS after setup, ``cpu_s`` the CPU seconds of
  all its threads over the timed runs. Ours reports whether anything imported TensorFlow; where our decoder's
  helper process ran (edge_runtime.overlap), its CPU seconds over the timed runs are in ``cpu_s`` too, its peak
  is ``helper_peak_mib`` and ``tree_mib`` is the sum of the two peaks (an upper bound of the pair's).
- :func:`run_process`, whole processes: a command (``edge-codec decode x.kcd x.dcm``, a batch over a
  folder, a baseline's command line) run ``runs`` times after a warm-up by a small stdlib-only
  timer process; the time is the wall time from spawn to exit, the peak is ``ru_maxrss`` of the
  command as ``wait4`` reports it (the largest single process of its tree: the timer itself holds
  about 10 MiB, so what it hands over at exec stays below any real peak), and with ``sample`` the
  sum of VmRSS over the process tree, sampled every ``sample`` seconds (batch workers included).

Codecs: ours through the edge runtime (``edge_runtime.runtime.encode_file`` / ``decode_file`` in
process, the ``edge-codec`` CLI as a whole process); the classical ones (:func:`baseline`) through
imagecodecs: JPEG 2000 (OpenJPEG), HTJ2K (OpenJPH), JPEG XL (libjxl, effort 7) and JPEG-LS
(CharLS). A classical encode reads the image (data.readers, as ours does), codes every 2-D plane
and writes a small container (:func:`write_stream`: a JSON header with the geometry, then each
plane's codestream behind its length); a decode reads it, decodes every plane and writes a DICOM
with the source's header (read with ``stop_before_pixels``; ours carries its header in the stream).
``python -m keras_codec.evaluation.speed encode|decode CODEC IN OUT`` is that as a command line, also over
a folder of files, so that whole-process baselines start the same way ours does.

Used by ``keras-codec bench --speed`` (:func:`image_speed`) and by ``benchmarks/bench_speed.py``;
it lives in the package (not under ``benchmarks/``) so that the spawned children can import it
from any working folder. Nothing here imports TensorFlow. Beside the engine, not on top of it: it
uses only :mod:`~keras_codec.evaluation.baselines` and :mod:`~keras_codec.evaluation.metrics`.
"""
from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# The children import only what their codec needs (data, pydicom and imagecodecs, or the edge
# runtime), inside the functions below: their memory after setup and their peak are measured.

__all__ = ["COLUMNS", "LIBRARIES", "LOSSY_METHODS", "baseline", "base_decode_file", "base_encode_file",
           "edge_codec_command", "image_speed", "measure", "plot", "read_stream", "run_process", "stats_ms",
           "table_lines", "write_stream"]

COLUMNS = ("image", "size", "codec", "mode", "bpp", "psnr", "max_abs_err", "encode_ms", "decode_ms",
           "encode_ms_min", "decode_ms_min", "encode_ms_max", "decode_ms_max", "runs", "threads",
           "peak_rss_mib_enc", "peak_rss_mib_dec", "rss_base_mib", "load1_start")
WARMUP_S = 1.0
"""The warm-up of an in-process measurement (measure): runs until this many seconds have passed."""
LIBRARIES = {"jpeg2000": "OpenJPEG", "htj2k": "OpenJPH", "jpegxl": "libjxl", "jpegls": "CharLS"}
# DICOM's defined terms for Lossy Image Compression Method (0028,2114)
LOSSY_METHODS = {"jpeg2000": "ISO_15444_1", "htj2k": "ISO_15444_15", "jpegxl": "ISO_18181_1",
                 "jpegls": "ISO_14495_1"}
STREAM_MAGIC = b"KCSPEED1"
MIB = 1024.0 * 1024.0


# --------------------------------------------------------------------------- classical codecs

@functools.lru_cache(maxsize=None)
def _htj2k_class():
    from keras_codec.evaluation import baselines  # in the classical child only (see the imports)

    class HTJ2K(baselines.ClassicalCodec):
        """High-throughput JPEG 2000 (OpenJPH through imagecodecs): lossy by OpenJPH's quantization step
        (relative to the sample range, searched on a log scale) with the 9/7 wavelet, or reversible 5/3."""

        name = "htj2k"
        param_worst = 0.05
        param_best = 1e-6
        log_param = True

        def _encode(self, plane, param, precision):
            import imagecodecs  # in the classical child only (see the imports)

            if param is None:
                return imagecodecs.htj2k_encode(plane, reversible=True)
            return imagecodecs.htj2k_encode(plane, float(param), reversible=False)

        def _decode(self, data):
            import imagecodecs  # in the classical child only (see the imports)

            return imagecodecs.htj2k_decode(data)

    return HTJ2K


def baseline(name: str):
    """A classical codec by name: jpeg2000 (OpenJPEG), htj2k (OpenJPH), jpegxl (libjxl), jpegls (CharLS)."""
    from keras_codec.evaluation import baselines  # in the classical child only (see the imports)

    if name == "htj2k":
        return _htj2k_class()()
    codecs = {"jpeg2000": baselines.JPEG2000, "jpegxl": baselines.JPEGXL, "jpegls": baselines.JPEGLS}
    if name not in codecs:
        raise ValueError(f"unknown classical codec {name!r}; expected one of {', '.join(LIBRARIES)}")
    return codecs[name]()


def write_stream(path, image, planes: list) -> int:
    """Write the container of one image's plane codestreams; returns their bytes (the container's are not counted)."""
    head = json.dumps({"rows": image.rows, "cols": image.cols, "frames": image.frames, "samples": image.samples,
                       "dtype": image.pixels.dtype.str, "bits_stored": image.bits_stored, "signed": image.signed,
                       "photometric": image.photometric, "modality": image.modality}).encode()
    parts = [STREAM_MAGIC, len(head).to_bytes(4, "little"), head]
    for data in planes:
        parts += [len(data).to_bytes(4, "little"), data]
    Path(path).write_bytes(b"".join(parts))
    return sum(len(d) for d in planes)


def read_stream(path) -> tuple[dict, list]:
    """(geometry header, [plane codestream, ...]) of a :func:`write_stream` container."""
    blob = Path(path).read_bytes()
    if not blob.startswith(STREAM_MAGIC):
        raise ValueError(f"{path}: not a speed-benchmark stream (written by keras_codec.evaluation.speed.write_stream)")
    pos = len(STREAM_MAGIC)
    n = int.from_bytes(blob[pos:pos + 4], "little")
    info = json.loads(blob[pos + 4:pos + 4 + n])
    pos += 4 + n
    planes = []
    while pos < len(blob):
        n = int.from_bytes(blob[pos:pos + 4], "little")
        if pos + 4 + n > len(blob):
            raise ValueError(f"{path}: truncated plane {len(planes)}")
        planes.append(blob[pos + 4:pos + 4 + n])
        pos += 4 + n
    if len(planes) != info["frames"] * info["samples"]:
        raise ValueError(f"{path}: {len(planes)} planes, expected {info['frames'] * info['samples']}")
    return info, planes


def base_encode_file(codec, param, src, out) -> int:
    """Read an image file, code every plane with a classical codec, write the container; returns pixel bytes."""
    from data.readers import read_image  # in the classical child only (see the imports)

    image = read_image(src)
    px = image.pixels
    planes = [codec.encode(np.ascontiguousarray(px[f, :, :, s]), param, image.bits_stored)
              for f in range(image.frames) for s in range(image.samples)]
    return write_stream(out, image, planes)


def base_decode_file(codec, stream, out, ref=None, lossless: bool = False) -> Path:
    """Decode a container to a DICOM file (with the header of the source file `ref`, when given)."""
    import pydicom  # in the classical child only (see the imports)

    from data.image import Image
    from data.writers import write_dicom

    info, planes = read_stream(stream)
    dtype = np.dtype(info["dtype"])
    lo, hi = ((-(1 << (info["bits_stored"] - 1)), (1 << (info["bits_stored"] - 1)) - 1) if info["signed"]
              else (0, (1 << info["bits_stored"]) - 1))
    # decoded straight into the image (no list of planes, no stacked copy); clipped to the stored range
    # (DESIGN.md): JPEG-LS NEAR>0 may overshoot MAXVAL = 2**16-1 by NEAR
    px = np.empty((info["frames"], info["rows"], info["cols"], info["samples"]), dtype)
    samples = info["samples"]
    for i, p in enumerate(planes):
        np.clip(codec.decode(p, dtype, info["bits_stored"]), lo, hi, out=px[i // samples, :, :, i % samples])
    dataset = None
    if ref is not None:
        try:
            dataset = pydicom.dcmread(ref, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            pass  # a PNG / TIFF source: the DICOM written is a new Secondary Capture
    image = Image(pixels=px, bits_stored=info["bits_stored"], signed=info["signed"],
                  photometric=info["photometric"], modality=info["modality"], dataset=dataset)
    if lossless:
        return write_dicom(out, image, overwrite=True, mark_lossless=True)
    n_bytes = sum(len(p) for p in planes)
    return write_dicom(out, image, lossy=True, ratio=px.size * dtype.itemsize / max(n_bytes, 1),
                       method=LOSSY_METHODS[codec.name], overwrite=True)


def _folder_pairs(in_dir: Path, out_dir: Path, suffix_in: str, suffix_out: str) -> list:
    files = sorted(p for p in in_dir.iterdir() if p.suffix == suffix_in)
    if not files:
        raise FileNotFoundError(f"{in_dir}: no *{suffix_in} files")
    out_dir.mkdir(parents=True, exist_ok=True)
    return [(p, out_dir / (p.stem + suffix_out)) for p in files]


def _cli(argv=None) -> int:
    """``python -m keras_codec.evaluation.speed encode|decode CODEC IN OUT``: a classical codec as a whole process."""
    p = argparse.ArgumentParser(prog="python -m keras_codec.evaluation.speed",
                                description="a classical codec, file (or folder) to file, for whole-process timing")
    p.add_argument("command", choices=("encode", "decode"))
    p.add_argument("codec", choices=tuple(LIBRARIES))
    p.add_argument("input", help="image file (encode) or stream (decode); or a folder of them (*.dcm / *.bin)")
    p.add_argument("output", help="stream (encode) or DICOM (decode) file, or a folder")
    p.add_argument("--param", type=float, default=None, help="the codec's quality parameter (none: lossless)")
    p.add_argument("--ref", default=None, help="decode: the source image (or folder) whose DICOM header to keep")
    args = p.parse_args(argv)
    codec = baseline(args.codec)
    param = None if args.param is None else (int(args.param) if codec.integer_param else args.param)
    src, dst = Path(args.input), Path(args.output)
    if args.command == "encode":
        pairs = _folder_pairs(src, dst, ".dcm", ".bin") if src.is_dir() else [(src, dst)]
        for a, b in pairs:
            base_encode_file(codec, param, a, b)
    else:
        pairs = _folder_pairs(src, dst, ".bin", ".dcm") if src.is_dir() else [(src, dst)]
        ref = Path(args.ref) if args.ref else None
        for a, b in pairs:
            r = (ref / (a.stem + ".dcm") if ref.is_dir() else ref) if ref is not None else None
            base_decode_file(codec, a, b, r, lossless=param is None)
    return 0


# --------------------------------------------------------------------------- in-process timing

def _rss_mib(key: str = "VmRSS") -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def _child(conn, job: dict):
    """One measurement: warm-up, then `runs` timed runs; sends times, CPU time and peak RSS (MiB)."""
    try:
        if job.get("cpus"):
            os.sched_setaffinity(0, job["cpus"])
        os.environ["OMP_NUM_THREADS"] = str(job["threads"])
        fn = {"ours_encode": _ours_encode, "ours_decode": _ours_decode,
              "base_encode": _base_encode, "base_decode": _base_decode}[job["kind"]]
        run_once = fn(job)  # setup (imports, model loading) is not timed
        base = _rss_mib()
        t0 = time.perf_counter()
        run_once()  # warm-up: at least one run, and WARMUP_S of them
        while time.perf_counter() - t0 < WARMUP_S:
            run_once()
        times = []
        helper0 = _helper_usage()
        cpu0 = time.process_time()
        for _ in range(job["runs"]):
            t0 = time.perf_counter()
            run_once()
            times.append(time.perf_counter() - t0)
        cpu = time.process_time() - cpu0
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a spawned child would
        # report the parent's RSS at fork time when that is larger than its own peak.
        peak = _rss_mib("VmHWM")
        helper = _helper_usage()
        extra = {}
        if helper is not None:  # our decoder's helper process (edge_runtime.overlap): its CPU and memory too
            same = helper0 is not None and helper0["pid"] == helper["pid"]
            cpu += helper["cpu_s"] - (helper0["cpu_s"] if same else 0.0)
            extra = {"helper_peak_mib": helper["peak_rss_mib"], "tree_mib": peak + helper["peak_rss_mib"]}
        tf = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith(("tensorflow.", "keras.")))
        conn.send({"times": times, "peak_rss_mib": peak, "rss_base_mib": base, "cpu_s": cpu,
                   "cores": len(os.sched_getaffinity(0)), "threads": job["threads"], "tensorflow": bool(tf),
                   "runtime": job.get("_runtime", ""), **extra})
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        import traceback  # on failure only: not in a measured child's memory

        conn.send({"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})


def _helper_usage():
    """edge_runtime.overlap.helper_usage() when our codec is loaded here (never imported for a classical codec)."""
    overlap = sys.modules.get("edge_runtime.overlap")
    return overlap.helper_usage() if overlap is not None else None


def _ours_options(job) -> dict:
    if job.get("max_error") is not None:
        return {"max_error": int(job["max_error"]), **({"fast": True} if job.get("fast") else {})}
    return {"quality": int(job["quality"])}


def _ours_encode(job):
    from edge_runtime import runtime, tflite_runner  # in our child only (see the imports)

    job["_runtime"] = tflite_runner.interpreter_module().__name__.split(".")[0]
    codec = runtime.load_codec(job["bundle"], num_threads=job["threads"])
    src, out, options = Path(job["src"]), Path(job["kcd"]), _ours_options(job)
    return lambda: runtime.encode_file(src, out, bundle=codec, force=True, **options)


def _ours_decode(job):
    from edge_runtime import runtime, tflite_runner  # in our child only (see the imports)

    job["_runtime"] = tflite_runner.interpreter_module().__name__.split(".")[0]
    codec = runtime.load_codec(job["bundle"], num_threads=job["threads"])
    src, out = Path(job["kcd"]), Path(job["dcm"])
    return lambda: runtime.decode_file(src, out, bundle=codec, force=True)


def _base_encode(job):
    codec = baseline(job["codec"])
    return lambda: base_encode_file(codec, job["param"], job["src"], job["stream"])


def _base_decode(job):
    codec = baseline(job["codec"])
    return lambda: base_decode_file(codec, job["stream"], job["dcm"], job["src"], lossless=job["param"] is None)


def measure(job: dict, timeout: float = 7200.0) -> dict:
    """Run one job in a fresh spawned process (module docstring); RuntimeError with the child's trace on failure.

    job: ``kind`` (ours_encode, ours_decode, base_encode, base_decode), ``runs``, ``threads``,
    optional ``cpus`` (the CPU set to pin the child to); ours: ``src``, ``kcd``, ``dcm``, ``bundle``
    and ``quality`` or ``max_error`` (and ``fast``); classical: ``codec``, ``param``, ``src``, ``stream``, ``dcm``.
    """
    ctx = mp.get_context("spawn")
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child, job))
    proc.start()
    child.close()
    try:
        result = conn.recv() if conn.poll(timeout) else {"error": f"no result within {timeout:.0f} s"}
    except EOFError:
        result = {"error": f"the child died (exit code {proc.join(5) or proc.exitcode})"}
    proc.join(60)
    if "error" in result:
        raise RuntimeError(f"{job['kind']} {job.get('codec', 'ours')} on {Path(job['src']).name}: "
                           f"{result['error']}\n{result.get('trace', '')}")
    return result


# --------------------------------------------------------------------------- whole-process timing

# Runs in a bare interpreter (stdlib only, about 10 MiB), so that what the command inherits from it
# at exec (Linux keeps the RSS high-water mark across execve) stays below any real peak.
_TIMER = r'''
import json, os, shutil, sys, threading, time
spec = json.loads(sys.argv[1])
if spec.get("cpus"):
    os.sched_setaffinity(0, spec["cpus"])
# as an installed package runs: Python caches the modules' bytecode (the warm-up run writes it)
env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
env.update(spec.get("env", {}))

def tree_rss_kib(pid):
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:"))
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except (OSError, ValueError, StopIteration):
            pass
    return total

def once():
    for p in spec.get("clean", []):
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.unlink(p)
    wr = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, spec["log"] + ".out", wr, 0o644),
               (os.POSIX_SPAWN_OPEN, 2, spec["log"] + ".err", wr, 0o644)]
    peak, stop = [0], threading.Event()
    t0 = time.perf_counter()
    pid = os.posix_spawn(spec["cmd"][0], spec["cmd"], env, file_actions=actions)
    if spec.get("sample"):
        def sample():
            while not stop.wait(spec["sample"]):
                peak[0] = max(peak[0], tree_rss_kib(pid))
        threading.Thread(target=sample, daemon=True).start()
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    return {"wall": wall, "code": os.waitstatus_to_exitcode(status), "maxrss_kib": ru.ru_maxrss,
            "cpu": ru.ru_utime + ru.ru_stime, "tree_kib": peak[0]}

out = {"runs": [], "warmup": None}
if spec["warmup"]:
    out["warmup"] = once()
    if out["warmup"]["code"] != 0:
        print(json.dumps(out)); sys.exit(0)
    if spec.get("budget") and out["warmup"]["wall"] > spec["budget"]:
        out["runs"], out["budget_hit"] = [out["warmup"]], True  # too slow to repeat: the first run counts
        print(json.dumps(out)); sys.exit(0)
for _ in range(spec["runs"]):
    r = once()
    out["runs"].append(r)
    if r["code"] != 0:
        break
print(json.dumps(out))
'''


def run_process(cmd, *, runs: int, log, warmup: bool = True, clean=(), cpus=None, sample: float | None = None,
                env: dict | None = None, budget_s: float | None = None) -> dict:
    """Time a whole command ``runs`` times after a warm-up run (module docstring).

    ``clean``: paths removed before every run (untimed), e.g. a batch's output folder; ``cpus``:
    pin the command to these CPUs; ``budget_s``: when the warm-up run takes longer, it is the only
    run (counted, and said so in ``note``). ``log``: the command's stdout/stderr go to log.out /
    log.err. Returns times (s), cpu_s, peak_rss_mib (largest single process, max over runs),
    tree_mib (sampled sum over the process tree, max over runs; 0 without ``sample``), runs, note.
    RuntimeError with the tail of stderr when the command fails. The command runs with Python's bytecode
    cache on (PYTHONDONTWRITEBYTECODE removed from its environment), as on an installed system.
    """
    cmd = [str(c) for c in cmd]
    spec = {"cmd": cmd, "runs": int(runs), "warmup": bool(warmup), "clean": [str(c) for c in clean],
            "cpus": sorted(cpus) if cpus else None, "sample": sample, "env": env or {}, "log": str(log),
            "budget": budget_s}
    proc = subprocess.run([sys.executable, "-S", "-c", _TIMER, json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the timer failed: {proc.stderr.strip()[-2000:]}")
    out = json.loads(proc.stdout)
    done = out["runs"] or ([out["warmup"]] if out["warmup"] else [])
    failed = next((r for r in done if r["code"] != 0), None)
    if failed is not None:
        err = Path(str(log) + ".err")
        tail = err.read_text(errors="replace").strip().splitlines()[-6:] if err.exists() else []
        raise RuntimeError(f"{' '.join(cmd)} exited with {failed['code']}:\n  " + "\n  ".join(tail))
    note = ""
    if out.get("budget_hit"):
        note = f"1 run, no warm-up: the first took {out['warmup']['wall']:.0f} s (> {budget_s:.0f} s budget)"
    return {"times": [r["wall"] for r in out["runs"]], "cpu_s": sum(r["cpu"] for r in out["runs"]),
            "peak_rss_mib": max(r["maxrss_kib"] for r in out["runs"]) / 1024.0,
            "tree_mib": max(r["tree_kib"] for r in out["runs"]) / 1024.0, "runs": len(out["runs"]), "note": note}


def edge_codec_command() -> list:
    """The ``edge-codec`` console script of this interpreter's environment (else ``python -m edge_runtime.cli``)."""
    here = Path(sys.executable).parent / "edge-codec"
    if here.is_file():
        return [str(here)]
    found = shutil.which("edge-codec")
    return [found] if found else [sys.executable, "-m", "edge_runtime.cli"]


def baseline_command() -> list:
    """``python -m keras_codec.evaluation.speed``: the classical codecs as a command line (see :func:`_cli`)."""
    return [sys.executable, "-m", "keras_codec.evaluation.speed"]


def stats_ms(times) -> tuple[float, float, float]:
    """(median, min, max) of times in seconds, as milliseconds."""
    t = 1000.0 * np.asarray(times, dtype=float)
    return float(np.median(t)), float(t.min()), float(t.max())


# --------------------------------------------------------------------------- keras-codec bench --speed

def image_speed(name, path, *, bundle, quality: int, runs: int, threads: int, tmp, load1: float,
                label: str = "ours (edge, TFLite)", progress=print) -> list:
    """Speed rows (COLUMNS) of one image file: ours at `quality`, then each classical configuration.

    Warm, in-process, file to file. A classical codec that cannot code this image (or reach our
    PSNR) is left out with a line saying why, instead of stopping the benchmark.
    """
    # the parent's side; imported here so that the children, which import this module, stay lean
    from data.readers import read_image
    from edge_runtime.runtime import pixel_stream_bytes
    from keras_codec.evaluation import baselines, metrics

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
            target = baselines.PSNRSearch(codec, px, bits_stored=image.bits_stored).seek(our_psnr)
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
        n_bytes = sum(len(p) for p in read_stream(job["stream"])[1])
        decoded = read_image(job["dcm"]).pixels
        rows.append(_row(name, size, f"{LIBRARIES[codec]} ({codec})", mode, n_bytes, samples,
                         metrics.psnr(px, decoded), metrics.max_abs_error(px, decoded), enc, dec, runs, 1, load1))
        progress(f"  {name}: {LIBRARIES[codec]} {mode} done")
    return rows


def _row(name, size, codec, mode, n_bytes, samples, psnr, err, enc, dec, runs, threads, load1):
    e_med, e_min, e_max = stats_ms(enc["times"])
    d_med, d_min, d_max = stats_ms(dec["times"])
    return {"image": name, "size": size, "codec": codec, "mode": mode, "bpp": round(8.0 * n_bytes / samples, 4),
            "psnr": round(float(psnr), 2), "max_abs_err": int(err), "encode_ms": round(e_med, 1),
            "decode_ms": round(d_med, 1), "encode_ms_min": round(e_min, 1), "decode_ms_min": round(d_min, 1),
            "encode_ms_max": round(e_max, 1), "decode_ms_max": round(d_max, 1),
            "runs": runs, "threads": threads, "peak_rss_mib_enc": round(enc["peak_rss_mib"], 1),
            "peak_rss_mib_dec": round(dec["peak_rss_mib"], 1),
            "rss_base_mib": round(max(enc["rss_base_mib"], dec["rss_base_mib"]), 1), "load1_start": round(load1, 2)}


TABLE = (("image", "image"), ("codec", "codec"), ("mode", "mode"), ("bpp", "bpp"), ("psnr", "PSNR dB"),
         ("max_abs_err", "max err"), ("encode_ms", "enc ms"), ("decode_ms", "dec ms"), ("threads", "thr"),
         ("peak_rss_mib_enc", "peak MiB enc"), ("peak_rss_mib_dec", "peak MiB dec"))


def table_lines(rows) -> list:
    """The speed table of :func:`image_speed` rows as aligned text lines (first three columns left-aligned)."""
    table = [tuple(h for _, h in TABLE)] + [tuple(str(r[c]) for c, _ in TABLE) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(TABLE))]
    lines = []
    for k, t in enumerate(table):
        lines.append("  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(t, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def plot(rows, path: Path, title: str):
    """Bar chart (log scale) of :func:`image_speed` rows, one panel per image."""
    import matplotlib  # plots only: loaded when a figure is drawn

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


if __name__ == "__main__":
    sys.exit(_cli())
