"""Speed benchmark: our codec (edge runtime) against OpenJPEG, HTJ2K, JPEG XL and CharLS.

Every case codes the same images with every codec in the same run (baselines are never numbers
copied from elsewhere), each measurement in a fresh process (keras_codec.evaluation.speed: timing rule,
peak RSS, the classical codecs):

  ct        512x512 CT explicit_VR-UN.dcm at quality 17, warm in-process encode / decode, file to
            file; OpenJPEG, HTJ2K and JPEG XL lossy at the PSNR ours reached
  lossless  the same slice with --max-error 0 (lossless) and 2, also --fast, warm in-process; OpenJPEG, HTJ2K,
            JPEG XL and CharLS lossless, CharLS NEAR=2
  process   `edge-codec decode` of that slice as a whole process (start-up and imports included);
            the baselines as a Python command line (python, numpy, pydicom, imagecodecs)
  cr        1760x1760 CR RG3_UNCR.dcm, warm in-process; lossy baselines at our PSNR, CharLS
  folder    64 real CT slices (pyradiomics 3.0.1 sdist, benchmarks/_volumes.py) through batch mode:
            `edge-codec encode DIR OUT --jobs 2`, then `edge-codec decode OUT DIR2 --jobs 2`, wall
            time of the batch / 64; the baselines code the same slices on one core, one process
  cine      120-frame 480x640 RGB cine color3d_jpeg_baseline.dcm, `edge-codec encode` / `decode`
            file to file as whole processes; when the first (warm-up) run takes longer than
            --cine-budget seconds it is the only run, and the row says so

Times are the median (and min, max) of --runs runs after a warm-up (default 5). Classical codecs
run single-threaded, as imagecodecs calls them (--pin-baselines also pins them to one CPU); ours
on every CPU of this process (TFLite --threads in process, the CLI's own defaults as a process:
2 threads for one file, --jobs 2 workers of 1 thread each for a folder). "cores" is the CPUs ours
may use (1 for a classical codec: one thread) and, in brackets, the CPU time the measurement used
over its wall time. Peak RSS is in MiB (the largest single process; for batches and the cine also
the sum over the process tree, sampled; for a warm in-process row whose process started our decoder's
helper, edge_runtime.overlap, the two processes' peaks added, and the helper's CPU time in cpu/wall;
a peak target is checked against the larger of the two).
Each row also shows its time as a multiple of OpenJPEG's in the same case, and ours the speed
target and whether it is met.

    .venv/bin/python benchmarks/bench_speed.py              # everything (the cine takes minutes)
    .venv/bin/python benchmarks/bench_speed.py --quick      # 3 runs, no cine
    .venv/bin/python benchmarks/bench_speed.py --cases ct process --runs 7 --case-runs process=10

Writes out/bench/speed.csv, speed.md (the README table) and speed.png, after every case. Our
codec's measurements never import TensorFlow (the in-process children check); this script runs in
the workstation venv and in the TensorFlow-free edge venv (with imagecodecs and matplotlib).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from keras_codec.evaluation import speed  # noqa: E402  (numpy only; the children import the rest)

CASES = ("ct", "lossless", "process", "cr", "folder", "cine")
TITLES = {
    "ct": "512x512 CT slice, warm in-process, file to file",
    "lossless": "512x512 CT slice, lossless and max error 2, warm in-process",
    "process": "512x512 CT slice, whole process",
    "cr": "1760x1760 CR, warm in-process",
    "folder": "CT slices through batch mode (whole batch / slices)",
    "cine": "120-frame 480x640 RGB cine, whole process, file to file",
}
CT, CR, CINE = "explicit_VR-UN.dcm", "RG3_UNCR.dcm", "color3d_jpeg_baseline.dcm"
OURS = "ours (edge)"
NAMES = {"jpeg2000": "OpenJPEG", "htj2k": "HTJ2K (OpenJPH)", "jpegxl": "JPEG XL (libjxl e7)", "jpegls": "CharLS"}
LOSSY = ("jpeg2000", "htj2k", "jpegxl")
MB = 1e6
# the speed targets: (case, op, our mode kind) -> time limit in ms per image / slice / cine
TIME_TARGETS = {("ct", "encode", "lossy"): 80, ("ct", "decode", "lossy"): 40, ("process", "decode", "lossy"): 300,
                ("folder", "encode", "lossy"): 60, ("folder", "decode", "lossy"): 30,
                ("cine", "encode", "lossy"): 20000, ("cine", "decode", "lossy"): 10000,
                ("lossless", "encode", "D=0"): 200, ("lossless", "encode", "D=0 fast"): 200,
                ("cr", "decode", "lossy"): 800}
PEAK_TARGETS = {"cine": 600 * MB}  # every other peak: 1 GB
PEAK_DEFAULT = 1000 * MB
FIELDS = ("case", "image", "codec", "mode", "op", "per", "runs", "median_ms", "min_ms", "max_ms", "peak_mib",
          "tree_mib", "cores", "cpu_per_wall", "threads", "bpp", "psnr", "max_abs_err", "vs_openjpeg", "target",
          "met", "note", "load1", "code", "tflite")


class Bench:
    """What every case shares: options, paths, the rows so far, and the outputs rewritten after each case."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="bench_speed_", dir=args.tmp))
        self.rows: list[dict] = []
        self.cpus = sorted(os.sched_getaffinity(0))
        # classical codecs are single-threaded as imagecodecs calls them (their CPU time / wall time
        # shows it); --pin-baselines also pins them to one CPU, which a shared machine can make noisier
        self.one_cpu = [self.cpus[-1]] if args.pin_baselines else None
        self.default_bundle = Path(args.bundle).resolve() == (ROOT / "edge_runtime" / "models" / "default").resolve()
        self.runtime = ""
        self.notes: list[str] = []
        self.load_start = os.getloadavg()
        self.started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        self.ct_shared = None  # (ours .kcd, our PSNR, {codec: (param, stream)}) of the CT slice, for 'process'
        self.code_start = _code_state()
        self.read_notes: dict[str, str] = {}

    # ------------------------------------------------------------------ helpers
    def runs(self, case: str) -> int:
        return self.args.case_runs.get(case, self.args.runs)

    def say(self, text: str) -> None:
        print(text, flush=True)

    def edge(self, *args) -> list:
        cmd = speed.edge_codec_command() + [str(a) for a in args]
        return cmd if self.default_bundle else cmd + ["--bundle", str(self.args.bundle)]

    def add(self, case, image, codec, mode, op, result, *, per="image", scale=1, quality=None, threads=None,
            note="") -> dict:
        """One row from a measure() / run_process() result (times divided by `scale`: slices of a batch)."""
        med, lo, hi = speed.stats_ms([t / scale for t in result["times"]])
        wall = sum(result["times"])
        row = {"case": case, "image": image, "codec": codec, "mode": mode, "op": op, "per": per,
               "runs": len(result["times"]), "median_ms": round(med, 2), "min_ms": round(lo, 2),
               "max_ms": round(hi, 2), "peak_mib": round(result["peak_rss_mib"], 1),
               "tree_mib": round(result.get("tree_mib", 0.0), 1) or "",
               "cores": (result.get("cores") or len(result.get("cpus") or self.cpus)) if codec == OURS else 1,
               "cpu_per_wall": round(result["cpu_s"] / wall, 2) if wall > 0 else "",
               "threads": threads if threads is not None else result.get("threads", ""),
               "bpp": "", "psnr": "", "max_abs_err": "", "vs_openjpeg": "", "target": "", "met": "",
               "note": "; ".join(n for n in (result.get("note", ""), note) if n),
               "load1": round(os.getloadavg()[0], 2), "code": _code_state(),
               "tflite": (result.get("runtime") or _interpreter()) if codec == OURS else ""}
        if quality:
            row.update({k: v for k, v in quality.items() if k in ("bpp", "psnr", "max_abs_err")})
        if codec == OURS:
            self._target(row)
        self.rows.append(row)
        tree = f", tree {row['tree_mib']} MiB" if row["tree_mib"] else ""
        self.say(f"  [{case}] {codec} {mode} {op}: median {med:.1f} ms/{per} (min {lo:.1f}, max {hi:.1f}, "
                 f"{row['runs']} runs), peak {row['peak_mib']} MiB{tree}, cores {row['cores']} "
                 f"(cpu/wall {row['cpu_per_wall']})" + (f"; {row['note']}" if row["note"] else ""))
        return row

    def failed(self, case, image, codec, mode, op, exc) -> None:
        first = str(exc).strip().splitlines()
        self.say(f"  [{case}] {codec} {mode} {op}: FAILED: {' | '.join(first[:4])}")
        row = {k: "" for k in FIELDS}
        row.update(case=case, image=image, codec=codec, mode=mode, op=op, note=f"failed: {first[0] if first else exc}",
                   load1=round(os.getloadavg()[0], 2), code=_code_state())
        if codec == OURS:
            self._target(row)
            row["met"] = "NO (failed)"
        self.rows.append(row)

    def _target(self, row) -> None:
        kind = "lossy" if row["mode"].startswith("q") else row["mode"]
        limit = TIME_TARGETS.get((row["case"], row["op"], kind))
        peak = PEAK_TARGETS.get(row["case"], PEAK_DEFAULT)
        row["target"] = (f"<= {limit:g} ms, " if limit else "") + f"peak <= {peak / MB:g} MB"
        if row["median_ms"] == "":
            return
        misses = []
        if limit and row["median_ms"] > limit:
            misses.append(f"time x{row['median_ms'] / limit:.1f}")
        # memory: the larger of the largest process and the sampled sum over its tree (workers)
        if max(row["peak_mib"], row["tree_mib"] or 0) * 1024 * 1024 > peak:
            misses.append("peak")
        row["met"] = "yes" if not misses else "NO (" + ", ".join(misses) + ")"

    def ratios(self, case: str, reference_mode=None) -> None:
        """Each row's median as a multiple of OpenJPEG's in the same case and operation."""
        for row in self.rows:
            if row["case"] != case or row["median_ms"] == "":
                continue
            refs = [r for r in self.rows if r["case"] == case and r["op"] == row["op"] and
                    r["codec"] == NAMES["jpeg2000"] and r["median_ms"] != "" and
                    (reference_mode is None or r["mode"] == reference_mode)]
            if refs:
                row["vs_openjpeg"] = round(row["median_ms"] / refs[0]["median_ms"], 2)

    def quality(self, original, decoded, n_bytes) -> dict:
        from keras_codec.evaluation import metrics

        return {"bpp": round(8.0 * n_bytes / original.size, 4),
                "psnr": round(float(metrics.psnr(original, decoded)), 2),
                "max_abs_err": int(metrics.max_abs_error(original, decoded))}

    def match(self, name, pixels, target_psnr, bits_stored):
        """The parameter of a lossy classical codec reaching `target_psnr` on `pixels` (searched, untimed)."""
        from keras_codec.evaluation.baselines import PSNRSearch

        return PSNRSearch(speed.baseline(name), pixels, bits_stored=bits_stored).seek(target_psnr)["param"]

    def read_note(self, src, label=None, repeats: int = 3) -> None:
        """How long reading a source file takes (every encode, ours and theirs, starts with it): a header note."""
        import time

        import numpy as np
        import pydicom

        from data.readers import read_image

        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            read_image(src)
            times.append(time.perf_counter() - t0)
        try:
            syntax = pydicom.dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID.name
        except Exception:  # noqa: BLE001 - only a label
            syntax = "?"
        self.read_notes[str(src)] = f"{label or Path(src).name} ({syntax}) {1000 * np.median(times):.0f} ms"

    # ------------------------------------------------------------------ in-process cases
    def inproc_ours(self, case, image_name, src, px, mode, options, stem) -> float | None:
        """Ours, warm in-process encode then decode of one file; returns the PSNR reached (None if failed)."""
        from data.readers import read_image
        from edge_runtime.runtime import pixel_stream_bytes

        job = dict(src=str(src), kcd=str(stem) + ".kcd", dcm=str(stem) + "_ours.dcm", bundle=str(self.args.bundle),
                   threads=self.args.threads, runs=self.runs(case), **options)
        results = {}
        for op in ("encode", "decode"):
            try:
                results[op] = speed.measure(dict(job, kind=f"ours_{op}"))
            except RuntimeError as exc:
                self.failed(case, image_name, OURS, mode, op, exc)
                return None
            if results[op]["tensorflow"]:
                raise SystemExit(f"bench_speed: our {op} imported TensorFlow; the edge must not")
            self.runtime = results[op]["runtime"]
        q = self.quality(px, read_image(job["dcm"]).pixels, pixel_stream_bytes(Path(job["kcd"]).read_bytes()))
        for op in ("encode", "decode"):
            self.add(case, image_name, OURS, mode, op, results[op], quality=q, threads=self.args.threads)
        return float(q["psnr"])

    def inproc_base(self, case, image_name, src, px, codec, mode, param, stem) -> None:
        from data.readers import read_image

        job = dict(src=str(src), stream=f"{stem}_{codec}.bin", dcm=f"{stem}_{codec}.dcm", codec=codec, param=param,
                   threads=1, runs=self.runs(case), cpus=self.one_cpu)
        results = {}
        for op in ("encode", "decode"):
            try:
                results[op] = speed.measure(dict(job, kind=f"base_{op}"))
            except RuntimeError as exc:
                self.failed(case, image_name, NAMES[codec], mode, op, exc)
                return
        n_bytes = sum(len(p) for p in speed.read_stream(job["stream"])[1])
        q = self.quality(px, read_image(job["dcm"]).pixels, n_bytes)
        for op in ("encode", "decode"):
            self.add(case, image_name, NAMES[codec], mode, op, results[op], quality=q, threads=1)

    def lossy_baselines(self, case, image_name, src, image, psnr, stem, extra=()) -> dict:
        params = {}
        for codec in LOSSY:
            try:
                params[codec] = self.match(codec, image.pixels, psnr, image.bits_stored)
            except ValueError as exc:
                self.say(f"  [{case}] {NAMES[codec]} lossy left out: {exc}")
                continue
            self.inproc_base(case, image_name, src, image.pixels, codec, f"lossy @ {psnr:.1f} dB", params[codec], stem)
        for codec, mode, param in extra:
            self.inproc_base(case, image_name, src, image.pixels, codec, mode, param, stem + f"_{param}")
        return params

    def lossy_image_case(self, case, name, extra=()):
        """Ours at --quality on one corpus image, warm in process, then the lossy baselines at our PSNR
        (and `extra`); (stem, our PSNR, baseline params), or None when ours could not run."""
        from data.corpus import PYDICOM_DATA, corpus_path
        from data.readers import read_image

        src = corpus_path(name, PYDICOM_DATA)
        image = read_image(src)
        stem = str(self.tmp / case)
        q = self.args.quality
        self.read_note(src)
        psnr = self.inproc_ours(case, name, src, image.pixels, f"q{q}", {"quality": q}, stem)
        if psnr is None:
            return None
        params = self.lossy_baselines(case, name, src, image, psnr, stem, extra=extra)
        self.ratios(case)
        return stem, psnr, params

    def case_ct(self):
        done = self.lossy_image_case("ct", CT)
        if done is not None:
            stem, psnr, params = done
            self.ct_shared = (Path(stem + ".kcd"), psnr, {c: (p, Path(f"{stem}_{c}.bin")) for c, p in params.items()})

    def case_lossless(self):
        from data.corpus import PYDICOM_DATA, corpus_path
        from data.readers import read_image

        src = corpus_path(CT, PYDICOM_DATA)
        image = read_image(src)
        stem = str(self.tmp / "ct_bounded")
        for d in (0, 2):
            self.inproc_ours("lossless", CT, src, image.pixels, f"D={d}", {"max_error": d}, f"{stem}_d{d}")
        for d in (0, 2):  # --fast: every tile without a base
            self.inproc_ours("lossless", CT, src, image.pixels, f"D={d} fast", {"max_error": d, "fast": True},
                             f"{stem}_d{d}_fast")
        for codec in ("jpeg2000", "htj2k", "jpegxl", "jpegls"):
            self.inproc_base("lossless", CT, src, image.pixels, codec, "lossless", None, stem)
        self.inproc_base("lossless", CT, src, image.pixels, "jpegls", "NEAR=2", 2, stem + "_near2")
        self.ratios("lossless", reference_mode="lossless")

    def case_cr(self):
        self.lossy_image_case("cr", CR, extra=(("jpegls", "lossless", None), ("jpegls", "NEAR=2", 2)))

    # ------------------------------------------------------------------ whole-process cases
    def process(self, case, image, codec, mode, op, cmd, *, per="image", scale=1, clean=(), quality=None,
                cpus=None, sample=None, budget=None, note="", threads=None):
        try:
            result = speed.run_process(cmd, runs=self.runs(case), log=self.tmp / f"{case}_{op}", clean=clean,
                                       cpus=cpus, sample=sample, budget_s=budget,
                                       env={"PYTHONPATH": str(ROOT)} if codec != OURS else None)
        except RuntimeError as exc:
            self.failed(case, image, codec, mode, op, exc)
            return None
        result["cpus"] = cpus or self.cpus
        return self.add(case, image, codec, mode, op, result, per=per, scale=scale, quality=quality, note=note,
                        threads=threads)

    def _ct_streams(self):
        """Our .kcd and the lossy baselines' streams of the CT slice (from the ct case, or made here untimed)."""
        if self.ct_shared is not None:
            return self.ct_shared
        from data.corpus import PYDICOM_DATA, corpus_path
        from data.readers import read_image
        from keras_codec.evaluation import metrics

        src = corpus_path(CT, PYDICOM_DATA)
        image = read_image(src)
        stem = self.tmp / "ct"
        subprocess.run(self.edge("encode", src, f"{stem}.kcd", "--quality", self.args.quality, "--force"), check=True,
                       capture_output=True)
        subprocess.run(self.edge("decode", f"{stem}.kcd", f"{stem}_ours.dcm", "--force"), check=True,
                       capture_output=True)
        psnr = float(metrics.psnr(image.pixels, read_image(f"{stem}_ours.dcm").pixels))
        streams = {}
        for codec in LOSSY:
            try:
                param = self.match(codec, image.pixels, psnr, image.bits_stored)
            except ValueError:
                continue
            speed.base_encode_file(speed.baseline(codec), param, src, f"{stem}_{codec}.bin")
            streams[codec] = (param, Path(f"{stem}_{codec}.bin"))
        self.ct_shared = (Path(f"{stem}.kcd"), psnr, streams)
        return self.ct_shared

    def case_process(self):
        from data.corpus import PYDICOM_DATA, corpus_path
        from data.readers import read_image
        from edge_runtime.runtime import pixel_stream_bytes

        src = corpus_path(CT, PYDICOM_DATA)
        original = read_image(src).pixels
        kcd, psnr, streams = self._ct_streams()
        q = self.args.quality
        out = self.tmp / "proc_ours.dcm"
        row = self.process("process", CT, OURS, f"q{q}", "decode", self.edge("decode", kcd, out), clean=[out],
                           note="edge-codec decode x.kcd x.dcm")
        if row:
            row.update(self.quality(original, read_image(out).pixels, pixel_stream_bytes(kcd.read_bytes())))
        for codec, (param, stream) in streams.items():
            out = self.tmp / f"proc_{codec}.dcm"
            cmd = speed.baseline_command() + ["decode", codec, stream, out, "--param", param, "--ref", src]
            row = self.process("process", CT, NAMES[codec], f"lossy @ {psnr:.1f} dB", "decode", cmd,
                               cpus=self.one_cpu, clean=[out], note="python -m keras_codec.evaluation.speed decode")
            if row:
                n_bytes = sum(len(x) for x in speed.read_stream(stream)[1])
                row.update(self.quality(original, read_image(out).pixels, n_bytes))
        self.ratios("process")

    def case_folder(self):
        import numpy as np

        from data.readers import read_image
        from edge_runtime.runtime import pixel_stream_bytes
        from keras_codec.evaluation import metrics

        sys.path.insert(0, str(ROOT / "benchmarks"))
        from _volumes import ct_slice_folder

        n = self.args.folder_slices
        try:
            folder, description = ct_slice_folder(Path(self.args.cache) / "pyradiomics", n, progress=self.say)
        except (RuntimeError, OSError, ValueError) as exc:
            self.say(f"  [folder] no CT slices: {exc}")
            self.notes.append(f"folder case left out: {exc}")
            return
        self.notes.append(f"folder: {description}")
        self.say(f"  [folder] {description}")
        files = sorted(folder.glob("*.dcm"))
        self.read_note(files[0], label="a folder slice")
        originals = {p.stem: read_image(p).pixels for p in files}
        q = self.args.quality
        kcd_dir, dcm_dir = self.tmp / "folder_kcd", self.tmp / "folder_dcm"
        common = dict(per="slice", scale=len(files), sample=0.05)
        enc = self.process("folder", folder.name, OURS, f"q{q}", "encode",
                           self.edge("encode", folder, kcd_dir, "--jobs", 2, "--quality", q), clean=[kcd_dir],
                           note="edge-codec encode DIR OUT --jobs 2", **common)
        dec = enc and self.process("folder", folder.name, OURS, f"q{q}", "decode",
                                   self.edge("decode", kcd_dir, dcm_dir, "--jobs", 2), clean=[dcm_dir],
                                   note="edge-codec decode OUT DIR2 --jobs 2", **common)
        if not dec:
            return
        decoded = {p.stem: read_image(p).pixels for p in sorted(dcm_dir.glob("*.dcm"))}
        n_bytes = sum(pixel_stream_bytes(p.read_bytes()) for p in kcd_dir.glob("*.kcd"))
        self._folder_quality([enc, dec], originals, decoded, n_bytes)
        # the lossy baselines' parameters: our PSNR on 8 slices across the folder, stacked
        sample = [files[i].stem for i in np.linspace(0, len(files) - 1, min(8, len(files))).astype(int)]
        stack = np.concatenate([originals[s] for s in sample])
        target = float(metrics.psnr(stack, np.concatenate([decoded[s] for s in sample])))
        bits = read_image(files[0]).bits_stored
        configs = []
        for codec in LOSSY:
            try:
                configs.append((codec, f"lossy @ {target:.1f} dB (8 slices)", self.match(codec, stack, target, bits)))
            except ValueError as exc:
                self.say(f"  [folder] {NAMES[codec]} lossy left out: {exc}")
        configs.append(("jpegls", "NEAR=2", 2))
        for codec, mode, param in configs:
            bin_dir, out_dir = self.tmp / f"folder_{codec}_bin", self.tmp / f"folder_{codec}_dcm"
            base = speed.baseline_command()
            enc = self.process("folder", folder.name, NAMES[codec], mode, "encode",
                               base + ["encode", codec, folder, bin_dir, "--param", param], clean=[bin_dir],
                               cpus=self.one_cpu, threads=1, **common)
            dec = enc and self.process("folder", folder.name, NAMES[codec], mode, "decode",
                                       base + ["decode", codec, bin_dir, out_dir, "--param", param, "--ref", folder],
                                       clean=[out_dir], cpus=self.one_cpu, threads=1, **common)
            if dec:
                decoded = {p.stem: read_image(p).pixels for p in sorted(out_dir.glob("*.dcm"))}
                n_bytes = sum(sum(len(x) for x in speed.read_stream(p)[1]) for p in bin_dir.glob("*.bin"))
                self._folder_quality([enc, dec], originals, decoded, n_bytes)
        self.ratios("folder")

    def _folder_quality(self, rows, originals, decoded, n_bytes) -> None:
        """bpp over the folder, mean per-slice PSNR, largest error, into the rows of one codec."""
        import numpy as np

        from keras_codec.evaluation import metrics

        if set(decoded) != set(originals):
            for row in rows:
                row["note"] = "; ".join(filter(None, [row["note"], f"{len(decoded)} of {len(originals)} decoded"]))
            return
        psnrs = [metrics.psnr(originals[k], decoded[k]) for k in originals]
        pixels = sum(v.size for v in originals.values())
        for row in rows:
            row.update(bpp=round(8.0 * n_bytes / pixels, 4), psnr=round(float(np.mean(psnrs)), 2),
                       max_abs_err=max(metrics.max_abs_error(originals[k], decoded[k]) for k in originals))

    def case_cine(self):
        import numpy as np

        from data.corpus import PYDICOM_DATA, corpus_path
        from data.readers import read_image
        from keras_codec.evaluation import metrics

        src = Path(self.args.cine) if self.args.cine else corpus_path(CINE, PYDICOM_DATA)
        name = src.name
        self.read_note(src, repeats=1)
        original = read_image(src)
        q = self.args.quality
        kcd, dcm = self.tmp / "cine.kcd", self.tmp / "cine_ours.dcm"
        common = dict(per="cine", sample=0.25, budget=self.args.cine_budget)
        enc = self.process("cine", name, OURS, f"q{q}", "encode", self.edge("encode", src, kcd, "--quality", q),
                           clean=[kcd], **common)
        dec = enc and self.process("cine", name, OURS, f"q{q}", "decode", self.edge("decode", kcd, dcm), clean=[dcm],
                                   **common)
        if not dec:
            return
        from edge_runtime.runtime import pixel_stream_bytes

        ours = read_image(dcm).pixels
        q_ours = self.quality(original.pixels, ours, pixel_stream_bytes(kcd.read_bytes()))
        for row in (enc, dec):
            row.update(q_ours)
        # lossy baselines' parameters: our PSNR on every 12th frame
        frames = slice(0, None, 12)
        sub = np.ascontiguousarray(original.pixels[frames])
        target = float(metrics.psnr(sub, ours[frames]))
        del ours
        configs = []
        for codec in LOSSY:
            try:
                configs.append((codec, f"lossy @ {target:.1f} dB (10 frames)",
                                self.match(codec, sub, target, original.bits_stored)))
            except ValueError as exc:
                self.say(f"  [cine] {NAMES[codec]} lossy left out: {exc}")
        configs.append(("jpegls", "NEAR=2", 2))
        base = speed.baseline_command()
        for codec, mode, param in configs:
            stream, out = self.tmp / f"cine_{codec}.bin", self.tmp / f"cine_{codec}.dcm"
            enc = self.process("cine", name, NAMES[codec], mode, "encode",
                               base + ["encode", codec, src, stream, "--param", param], clean=[stream],
                               cpus=self.one_cpu, threads=1, **common)
            dec = enc and self.process("cine", name, NAMES[codec], mode, "decode",
                                       base + ["decode", codec, stream, out, "--param", param, "--ref", src],
                                       clean=[out], cpus=self.one_cpu, threads=1, **common)
            if dec:
                n_bytes = sum(len(x) for x in speed.read_stream(stream)[1])
                qual = self.quality(original.pixels, read_image(out).pixels, n_bytes)
                for row in (enc, dec):
                    row.update(qual)
        self.ratios("cine")

    # ------------------------------------------------------------------ outputs
    def header(self) -> list:
        import imagecodecs
        import numpy as np

        load_end = os.getloadavg()[0]
        loads = [r["load1"] for r in self.rows if r.get("load1") != ""]
        codes = list(dict.fromkeys([self.code_start] + [r["code"] for r in self.rows if r.get("code")]))
        interpreters = list(dict.fromkeys(r["tflite"] for r in self.rows if r.get("tflite"))) or [_interpreter()]
        runs = {c: self.runs(c) for c in self.args.cases}
        lines = [
            f"bench_speed {self.started}, code {self.code_start} (commit, + hash of uncommitted edge_runtime/data "
            f"changes); Python {platform.python_version()}, numpy {np.__version__}, imagecodecs "
            f"{imagecodecs.__version__}, TFLite interpreter {' then '.join(interpreters)}",
            f"{len(self.cpus)} CPUs for this process ({os.cpu_count()} on the machine); load average "
            f"{self.load_start[0]:.2f} at start, {max(loads, default=load_end):.2f} at most after a measurement, "
            f"{load_end:.2f} at end; ours at q{self.args.quality}, {self.args.threads} TFLite threads in process; "
            f"classical codecs single-threaded" + (", pinned to 1 CPU" if self.one_cpu else ""),
            "runs per case (median, min, max after a warm-up: 1 s in process, one run as a whole process): "
            + ", ".join(f"{c} {n}" for c, n in runs.items())
            + (f"; cine: a first run over {self.args.cine_budget:g} s is the only run" if "cine" in runs else ""),
        ]
        if len(codes) > 1 or len(interpreters) > 1:
            lines.append(f"WARNING: the code changed during the run ({' -> '.join(codes)}"
                         + (f"; interpreter {' -> '.join(interpreters)}" if len(interpreters) > 1 else "")
                         + "): rows were measured on different states (speed.csv: code, tflite per row)")
        if min(runs.values()) < 5:
            lines.append("NOTE: fewer than 5 runs in some case: not DESIGN.md's median of >= 5 (a quick check)")
        if self.args.quality != 17:
            lines.append(f"NOTE: the speed targets are for quality 17; this run is at q{self.args.quality}")
        if self.read_notes:
            lines.append("reading the source is part of every encode (data.readers.read_image, median of 3): "
                         + "; ".join(self.read_notes.values()))
        return lines + self.notes

    def table(self, markdown: bool) -> list:
        cols = (("case", "case"), ("codec", "codec"), ("mode", "mode"), ("op", "op"), ("runs", "runs"),
                ("median_ms", "median ms"), ("min_ms", "min"), ("max_ms", "max"), ("per", "per"),
                ("peak_mib", "peak MiB"), ("tree_mib", "tree MiB"), ("cores", "cores (cpu/wall)"), ("bpp", "bpp"),
                ("psnr", "PSNR dB"), ("vs_openjpeg", "x OpenJPEG"), ("target", "target"), ("met", "met"))

        def cell(r, k):
            if k == "cores" and r["cores"] != "":
                return f"{r['cores']} ({r['cpu_per_wall']})"
            if k in ("median_ms", "min_ms", "max_ms") and r[k] != "":
                return f"{r[k]:.1f}" if r[k] < 1000 else f"{r[k]:.0f}"
            return str(r[k])

        body = [[cell(r, k) for k, _ in cols] for r in self.rows]
        head = [h for _, h in cols]
        if markdown:
            return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(b) + " |"
                                                                                 for b in body]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        left = {0, 1, 2, 3, 8, 15, 16}
        fmt = lambda row: "  ".join(v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in  # noqa: E731
                                    enumerate(zip(row, widths)))
        lines, last = [fmt(head), fmt(["-" * w for w in widths])], None
        for r, b in zip(self.rows, body):
            if last is not None and r["case"] != last:
                lines.append("")
            lines.append(fmt(b))
            last = r["case"]
        return lines

    def write(self) -> None:
        with open(self.out / "speed.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        head = self.header()
        md = ["# Speed (benchmarks/bench_speed.py)", "", *[f"- {h}" for h in head], "",
              "Cases: " + "; ".join(f"**{c}** {TITLES[c]}" for c in CASES if any(r["case"] == c for r in self.rows)),
              "", *self.table(markdown=True), "",
              "median / min / max: ms per image (per slice for folder: batch wall time / slices); peak: MiB, "
              "largest single process (tree: sum over the process tree, sampled; a peak target is checked against "
              "the larger of the two); cores: the CPUs ours may use, 1 for a classical codec (one thread), and in "
              "brackets CPU time / wall time; x OpenJPEG: median over OpenJPEG's in the same case and operation "
              "(lossless case: OpenJPEG lossless); whole-process baselines are Python command lines "
              "(python -m keras_codec.evaluation.speed: numpy, pydicom, imagecodecs)."]
        (self.out / "speed.md").write_text("\n".join(md) + "\n")
        plot(self.rows, self.out / "speed.png", "\n".join(head[:2]))


def plot(rows, path: Path, title: str) -> None:
    """One log-scale panel per case: median ms (min-max bars) per codec and operation; ours' targets as red ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cases = [c for c in CASES if any(r["case"] == c and r["median_ms"] != "" for r in rows)]
    if not cases:
        return
    ncol = min(3, len(cases))
    nrow = (len(cases) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.2 * ncol, 4.6 * nrow), squeeze=False)
    for ax in axes.flat[len(cases):]:
        ax.axis("off")
    for ax, case in zip(axes.flat, cases):
        sub = [r for r in rows if r["case"] == case and r["median_ms"] != ""]
        groups = list(dict.fromkeys((r["codec"], r["mode"]) for r in sub))
        for k, op in enumerate(("encode", "decode")):
            xs, med, lo, hi, colors = [], [], [], [], []
            for i, g in enumerate(groups):
                r = next((r for r in sub if (r["codec"], r["mode"]) == g and r["op"] == op), None)
                if r is None:
                    continue
                xs.append(i + (k - 0.5) * 0.38)
                med.append(r["median_ms"])
                lo.append(r["median_ms"] - r["min_ms"])
                hi.append(r["max_ms"] - r["median_ms"])
                limit = TIME_TARGETS.get((case, op, "lossy" if r["mode"].startswith("q") else r["mode"]))
                if r["codec"] == OURS and limit:
                    ax.plot([xs[-1] - 0.19, xs[-1] + 0.19], [limit, limit], color="red", lw=2)
            ax.bar(xs, med, 0.38, yerr=[lo, hi], capsize=2, label=op, color=("C0", "C1")[k])
        ax.set_yscale("log")
        labels = [f"{c.split(' (')[0]}\n" + m.split(" (")[0].replace(" @ ", "\n@ ") for c, m in groups]
        ax.set_xticks(range(len(groups)), labels, fontsize=6.5)
        per = sub[0]["per"]
        ax.set_ylabel(f"median ms per {per}")
        ax.set_title(TITLES[case], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, title="red: target", title_fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _code_state() -> str:
    """HEAD's short hash, plus a hash of the uncommitted changes to edge_runtime/ and data/ when there are any."""
    import hashlib

    commit = _git("rev-parse", "--short", "HEAD") or "?"
    diff = _git("diff", "HEAD", "--", "edge_runtime", "data")
    untracked = _git("ls-files", "--others", "--exclude-standard", "--", "edge_runtime", "data")
    if not diff and not untracked:
        return commit
    return commit + "+" + hashlib.sha1((diff + untracked).encode()).hexdigest()[:6]


def _interpreter() -> str:
    """The TFLite interpreter edge_runtime would load now (its preference order), found without importing it."""
    import importlib
    import importlib.util

    importlib.invalidate_caches()
    for name in ("ai_edge_litert", "tflite_runtime"):
        if importlib.util.find_spec(name) is not None:
            return name
    return "none"


def _git(*args) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20)
        return proc.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _case_runs(text: str) -> tuple[str, int]:
    case, _, n = text.partition("=")
    if case not in CASES or not n.isdigit() or int(n) < 1:
        raise argparse.ArgumentTypeError(f"expected CASE=N with CASE one of {', '.join(CASES)}, got {text!r}")
    return case, int(n)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(ROOT / "edge_runtime" / "models" / "default"),
                   help="model bundle with TFLite graphs (default: the shipped one)")
    p.add_argument("--quality", type=int, default=17, help="our quality level (default 17, the speed targets')")
    p.add_argument("--runs", type=int, default=5, help="timed runs after a warm-up, every case (default 5)")
    p.add_argument("--case-runs", type=_case_runs, action="append", default=[], metavar="CASE=N",
                   help="runs for one case (repeatable), e.g. cine=1 folder=5")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="cases to run (default: all)")
    p.add_argument("--skip-cine", action="store_true", help="leave out the cine (minutes today)")
    p.add_argument("--quick", action="store_true", help="a fast check: 3 runs, no cine")
    p.add_argument("--cine-budget", type=float, default=60.0,
                   help="seconds: a cine measurement whose first run takes longer is that one run (default 60)")
    p.add_argument("--cine", default=None, help=f"another multi-frame file for the cine case (default: {CINE})")
    p.add_argument("--folder-slices", type=int, default=64, help="CT slices in the batch folder (default 64)")
    p.add_argument("--threads", type=int, default=2, help="TFLite threads for ours in process (default 2)")
    p.add_argument("--pin-baselines", action="store_true", help="pin the classical codecs to one CPU")
    p.add_argument("--out", default=str(ROOT / "out" / "bench"))
    p.add_argument("--cache", default=str(ROOT / "out" / "cache"), help="where the CT slice folder is built once")
    p.add_argument("--tmp", default=None, help="scratch folder (default: the system's temporary folder)")
    args = p.parse_args(argv)
    if args.quick:
        args.runs = min(args.runs, 3)
        args.skip_cine = True
    if args.skip_cine and "cine" in args.cases:
        args.cases.remove("cine")
    if args.runs < 1 or not 1 <= args.folder_slices <= 64:
        p.error("--runs must be >= 1 and --folder-slices in 1..64")
    args.case_runs = dict(args.case_runs)
    args.cases = [c for c in CASES if c in args.cases]

    from edge_runtime.bundle import InvalidBundleError, load_bundle
    from edge_runtime.tflite_runner import tflite_paths

    try:
        tflite_paths(load_bundle(args.bundle))
    except InvalidBundleError as exc:
        print(f"bench_speed: {exc}\nbench_speed: the speed benchmark needs a bundle with TFLite graphs; pass --bundle",
              file=sys.stderr)
        return 2
    bench = Bench(args)
    for line in bench.header():
        bench.say(line)
    try:
        for case in args.cases:
            bench.say(f"\n== {case}: {TITLES[case]} ({bench.runs(case)} runs)")
            getattr(bench, f"case_{case}")()
            bench.write()
    finally:
        import shutil

        shutil.rmtree(bench.tmp, ignore_errors=True)
    bench.say("")
    for line in bench.header():
        bench.say(line)
    bench.say("")
    for line in bench.table(markdown=False):
        bench.say(line)
    bench.say(f"\nwrote {bench.out / 'speed.csv'}, {bench.out / 'speed.md'} and {bench.out / 'speed.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
