"""`edge-codec`: the TensorFlow-free command line for carts and tablets.

    edge-codec encode IN OUT.kcd [--quality Q | --max-error D | --target-psnr P | --target-bpp B]
                                 [--fast] [--bundle B] [--force]
    edge-codec encode DIR OUTDIR [same options] [--jobs N]
    edge-codec encode --series DIR OUT.kcd [same options]     (a folder of single-slice files of one series)
    edge-codec encode --series DIR OUTDIR [same options]      (each subfolder of DIR one series, as a batch)
    edge-codec decode IN.kcd OUT.(dcm|png|tif) [--bundle B] [--force]
    edge-codec decode DIR OUTDIR [--format dcm|png|tif] [--jobs N] [--bundle B] [--force]
    edge-codec decode SERIES.kcd OUTDIR/ [--bundle B] [--force]  (one DICOM file per slice)
    edge-codec encode|decode DIR OUTDIR [...] --scheduler ADDRESS|local:N   (on a Dask cluster)
    edge-codec info IN.kcd
    edge-codec verify IN.kcd [--bundle B]

Every subcommand takes `--kernels xnnpack|reference` (TFLite's optimized or reference kernels).
A bad file, an existing output or a bundle problem gives one line on stderr naming the file and
exit status 1; the work is in edge_runtime.runtime.

With a folder, every image (encode) or .kcd (decode) under it is coded into OUTDIR with the same
layout, in N worker processes (default: one per CPU), skipping outputs that already exist unless
--force; output names, resuming and the summary are described in edge_runtime.batch. A progress
line goes to stderr (in place on a terminal, else every few seconds), each failure as one line;
the summary goes to stdout and to OUTDIR/batch_summary.json. Exit status 1 if any file failed,
130 on Ctrl-C (files in progress are finished first), 143 on SIGTERM (workers stopped at once).
With --scheduler the files are coded on a Dask cluster instead (edge_runtime.cluster): the same
outputs, names, resuming and summary; DIR and OUTDIR must be reachable by every worker.
Symbolic links out of DIR are skipped (reported as failed) unless --follow-symlinks.
Output closed early (`edge-codec info x.kcd | head -1`): exit status 141, no message.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

_FORMAT_SUFFIXES = {"dcm": (".dcm", ".dicom"), "png": (".png",), "tif": (".tif", ".tiff")}

EXIT_ERROR = 1
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_BROKEN_PIPE = 141
PROGRESS_EVERY = 5.0
"""Seconds between progress lines when stderr is not a terminal."""

ENCODE_OPTIONS = ("quality", "max_error", "target_psnr", "target_bpp", "group", "fast")
"""Encoding options set on the command line: runtime.encode_file keyword arguments, the same for one
file and for a folder (add a new option's argument in build_parser and its name here)."""


def build_parser() -> argparse.ArgumentParser:
    from edge_runtime import DEFAULT_QUALITY, OUTPUT_FORMATS as FORMATS, QUALITY_LEVELS, __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kernels", choices=("xnnpack", "reference"), default="xnnpack",
                        help="TFLite kernels: xnnpack (fast, default) or reference (portable)")
    bundle = argparse.ArgumentParser(add_help=False)
    bundle.add_argument("--bundle", metavar="B", default=None,
                        help="model bundle folder (default: the one shipped in edge_runtime/models/default)")
    force = argparse.ArgumentParser(add_help=False)
    force.add_argument("--force", action="store_true",
                       help="replace OUT if it exists (folders: redo every file, even those already done)")
    jobs = argparse.ArgumentParser(add_help=False)
    jobs.add_argument("--jobs", "-j", type=_positive_int, default=None, metavar="N",
                      help="worker processes: one per file of a folder, or one per plane of a multi-frame image "
                           "(default: one per CPU; 1 works in this process)")

    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("--scheduler", metavar="ADDRESS", default=None,
                         help="folders: code the files on a Dask cluster: a scheduler address (tcp://host:8786), "
                              "a scheduler file (.json), or local:N for N local worker processes; IN and OUT must "
                              "be reachable by every worker (pip install \"keras-codec[cluster]\")")
    links = argparse.ArgumentParser(add_help=False)
    links.add_argument("--follow-symlinks", action="store_true",
                       help="folders: also code files that symbolic links lead to outside IN (default: skip them)")

    p = argparse.ArgumentParser(prog="edge-codec", description="keras_codec edge runtime (no TensorFlow)")
    p.add_argument("--version", action="version", version=f"edge-codec {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{encode,decode,info,verify}")

    enc = sub.add_parser("encode", parents=[common, bundle, force, jobs, links, cluster],
                         help="DICOM/PNG/TIFF -> .kcd (a file, or every image under a folder)")
    enc.add_argument("input", metavar="IN", help="an image file, or a folder")
    enc.add_argument("output", metavar="OUT.kcd", help="the .kcd to write, or the output folder when IN is a folder")
    how = enc.add_mutually_exclusive_group()
    how.add_argument("--quality", "-q", type=int, default=None, choices=QUALITY_LEVELS, metavar="Q",
                     help=f"lossy, {QUALITY_LEVELS[0]}..{QUALITY_LEVELS[-1]}, higher is better "
                          f"(about 12 + 2Q dB; default {DEFAULT_QUALITY})")
    how.add_argument("--max-error", type=_non_negative_int, default=None, metavar="D",
                     help="every pixel within D stored units of the original (0: lossless), checked before writing")
    how.add_argument("--target-psnr", type=float, default=None, metavar="P",
                     help="the lowest quality reaching P dB (beyond the finest level: an error bound)")
    how.add_argument("--target-bpp", type=float, default=None, metavar="B",
                     help="the highest quality within B bits per sample (beyond the finest level: an error bound)")
    enc.add_argument("--fast", action="store_true",
                     help="with --max-error (or a target beyond the finest quality): code every tile of up to 2048x2048 "
                          "pixels without a wavelet base, no base-quality search (tiles up to 2^19 pixels have none "
                          "anyway); about twice as fast on large radiographs, a few %% larger there")
    enc.add_argument("--series", action="store_true",
                     help="IN is a folder of single-slice DICOM files of one series: code them as one stream "
                          "(slices ordered by position; edge_runtime.series); with an output folder, each "
                          "subfolder of IN is one series, coded as a batch")
    enc.add_argument("--group", type=_positive_int, default=None, metavar="N",
                     help="multi-frame images and series: frames per group (default 8), each frame after a "
                          "group's first coded from the previous one where that pays; a viewer decodes at most N "
                          "frames to show any one; 1 codes every frame on its own")

    dec = sub.add_parser("decode", parents=[common, bundle, force, jobs, links, cluster],
                         help=".kcd -> DICOM/PNG/TIFF (a file, or every .kcd under a folder)")
    dec.add_argument("input", metavar="IN.kcd", help="a .kcd file, or a folder")
    dec.add_argument("output", metavar="OUT.(dcm|png|tif)",
                     help="the file to write (format from its extension), or the output folder")
    dec.add_argument("--format", choices=FORMATS, default=None,
                     help="folders: write every file in this format (default: dcm for streams carrying a "
                          "DICOM header, else tif for several frames, png for one)")

    inf = sub.add_parser("info", parents=[common, bundle], help="what a .kcd holds")
    inf.add_argument("input", metavar="IN.kcd")

    ver = sub.add_parser("verify", parents=[common, bundle], help="CRC, model id and a full decode")
    ver.add_argument("input", metavar="IN.kcd")
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _encode_options(args) -> dict:
    """The runtime.encode_file keyword arguments given on the command line (one file or a folder)."""
    given = {name: getattr(args, name, None) for name in ENCODE_OPTIONS}
    return {name: v for name, v in given.items() if v is not None and v is not False}  # flags only when set


def _bases(d: dict) -> str:
    """How many of an error-bounded stream's tile streams are coded without a base (the rest: a base each)."""
    return f"{d.get('tiles_without_base') or 0} of {d['tiles']} tile stream(s) without a base"


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc):
        text = f"{exc.filename}: {exc.strerror or exc}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _print_info(d: dict) -> None:
    known = {True: f"yes, {d['bundle']}", False: f"no, not {d['bundle']}",
             None: f"unknown, no readable bundle at {d['bundle']}"}[d["model_known"]]
    rows = [
        ("file", d["file"]),
        ("geometry", f"{d['rows']} x {d['cols']}, {d['frames']} frame(s), {d['samples']} sample(s)"),
        ("pixels", f"{d['dtype']}, {d['bits_stored']} bits stored, {d['photometric']}"),
        ("model id", f"{d['model_id']} (known: {known})"),
        ("mode", f"lossy, quality {d['quality']}" if d["mode"] == "lossy" else
         f"lossless (bit-exact; {_bases(d)})" if d["mode"] == "lossless" else
         f"{d['mode']} (every pixel within {d['max_error']} of the original; {_bases(d)})"),
        ("coding", f"up to {d['levels']} wavelet levels, tiles {d['tile'][0]} x {d['tile'][1]} ({d['tiles']} in all)"),
        *([("colour", f"{d['colour']} transform, {d['grey_frames']} of {d['frames']} frame(s) grey (one plane)")]
          if d.get("colour") else []),
        *([("frames", f"groups of {d['group']} (random access), {d['predicted_frames']} of {d['frames']} frame(s) "
                      f"predicted from the previous one")] if d.get("group") else []),
        ("bytes", f"{d['bytes']} ({d['pixel_bytes']} pixel stream)"),
        ("bpp", f"{d['bpp']:.4f} (ratio {d['ratio']:.2f}:1)"),
        ("metadata", f"DICOM header, {d['metadata_bytes']} bytes" if d["has_metadata"] else "none"),
    ]
    if d.get("series"):
        s = d["series"]
        group = f"groups of {s['group']} frame(s)" if s["group"] else "every slice on its own"
        rows[-1] = ("metadata", f"{s['slices']} slice headers, {d['metadata_bytes']} bytes "
                                f"({s['common_bytes']} bytes shared by all)")
        rows.insert(2, ("series", f"{s['slices']} slice(s), ordered by {s['ordering']}, {group}"))
    for k, v in rows:
        print(f"{k + ':':10s} {v}")


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _Progress:
    """done/total, files/s, input MB/s and ETA on stderr: rewritten in place on a terminal, else a
    line every PROGRESS_EVERY seconds; each failure as one line as it happens."""

    def __init__(self, command: str, in_dir: str, stream=None):
        self.command, self.in_dir, self.stream = command, in_dir, stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = 0
        self.last = float("-inf") if self.tty else time.monotonic()  # a terminal shows the first file at once

    def __call__(self, record: dict, snap: dict) -> None:
        if record["status"] == "failed":
            self._clear()
            print(f"edge-codec {self.command}: failed: {os.path.join(self.in_dir, record['input'])}: "
                  f"{record['reason']}", file=self.stream, flush=True)
        now = time.monotonic()
        last = snap["done"] == snap["total"]
        if self.tty and (now - self.last >= 0.1 or last):
            line = self.line(snap)
            self.stream.write("\r" + line.ljust(self.width))
            self.stream.flush()
            self.last, self.width = now, len(line)
        elif not self.tty and now - self.last >= PROGRESS_EVERY:
            print(self.line(snap), file=self.stream, flush=True)
            self.last = now

    @staticmethod
    def line(snap: dict) -> str:
        eta = "--:--" if snap["eta"] is None else _duration(snap["eta"])
        extra = ", ".join(f"{snap[k]} {k}" for k in ("skipped", "failed") if snap[k])
        return (f"{snap['done']}/{snap['total']} files, {snap['files_per_second']:.1f} files/s, "
                f"{snap['mb_per_second']:.1f} MB/s in, ETA {eta}" + (f" ({extra})" if extra else ""))

    def _clear(self) -> None:
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0

    def close(self) -> None:
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


def _print_batch_summary(s: dict) -> None:
    from edge_runtime.batch import MB, SUMMARY_NAME

    workers = f"{s['worker_processes']} worker processes" if s["worker_processes"] else "in this process"
    if s.get("scheduler"):
        workers = f"Dask cluster {s['scheduler']}: {s['cluster_workers']} workers, {s['workers_used']} used"
    ratio = "n/a" if s["ratio"] is None else f"{s['ratio']:.2f}:1"
    kinds = "original : coded" if s["command"] == "encode" else "decoded : coded"
    stopped = f" (interrupted by {s.get('interrupted_by') or 'SIGINT'})" if s["interrupted"] else ""
    print(f"{s['command']} {s['input_dir']} -> {s['output_dir']}: {s['total']} files: {s['ok']} ok, "
          f"{s['skipped']} skipped, {s['failed']} failed{stopped}")
    print(f"  {s['bytes_in'] / MB:.2f} MB in, {s['bytes_out'] / MB:.2f} MB out (files coded), "
          f"ratio {ratio} ({kinds} file bytes)")
    print(f"  {s['wall_seconds']:.2f} s wall, {s['files_per_second']:.2f} files/s, "
          f"{s['mb_per_second']:.2f} MB/s in, {workers}")
    if s["failures"]:
        print("  failed:")
        for f in s["failures"]:
            print(f"    {os.path.join(s['input_dir'], f['input'])}: {f['reason']}")
    print(f"  summary: {os.path.join(s['output_dir'], SUMMARY_NAME)}")


def _run_folder(args) -> int:
    from edge_runtime import batch

    if args.scheduler is not None and args.jobs is not None:
        print(f"edge-codec {args.command}: --jobs is ignored with --scheduler (the cluster's workers code the "
              f"files, one per worker thread)", file=sys.stderr)
    progress = _Progress(args.command, args.input)
    common = dict(jobs=args.jobs, force=args.force, bundle=args.bundle, kernels=args.kernels, on_file=progress,
                  follow_symlinks=args.follow_symlinks, scheduler=args.scheduler)
    try:
        if args.command == "encode":
            s = batch.encode_folder(args.input, args.output, encode_options=_encode_options(args),
                                    series=getattr(args, "series", False), **common)
        else:
            s = batch.decode_folder(args.input, args.output, fmt=args.format, **common)
    finally:
        progress.close()
    _print_batch_summary(s)
    if s["interrupted"]:
        by = s.get("interrupted_by") or "SIGINT"
        print(f"edge-codec {args.command}: interrupted ({by})", file=sys.stderr)
        return EXIT_TERMINATED if by == "SIGTERM" else EXIT_INTERRUPTED
    return EXIT_ERROR if s["failed"] else 0


def _is_folder_name(output: str) -> bool:
    """Whether a decode output names a folder: an existing one, a trailing separator, or a name without suffix."""
    return os.path.isdir(output) or output.endswith(("/", os.sep)) or not os.path.splitext(output)[1]


def _run_series_encode(args) -> int:
    from edge_runtime import series

    if not os.path.isdir(args.input):
        raise NotADirectoryError(f"{args.input}: --series reads a folder of single-slice DICOM files")
    if not args.output.lower().endswith(".kcd"):  # a folder: every subfolder of IN is one series
        return _run_folder(args)
    if getattr(args, "scheduler", None) is not None:
        raise ValueError("--scheduler codes folders: with --series, give an output folder (each subfolder of IN "
                         "is one series), not a .kcd")
    r = series.encode_series(args.input, args.output, **_encode_options(args), bundle=args.bundle,
                             force=args.force, kernels=args.kernels, jobs=args.jobs)
    how = f"quality {r['quality']}" if r["mode"] == "lossy" else r["mode"]
    print(f"{r['output']}: {r['slices']} slices (ordered by {r['ordering']}), {r['bytes']} bytes, "
          f"{r['bpp']:.3f} bpp, ratio {r['ratio']:.2f}:1, {how}")
    return 0


def _run(args) -> int:
    from edge_runtime import runtime

    if args.command == "encode" and getattr(args, "series", False):
        return _run_series_encode(args)
    if args.command in ("encode", "decode") and os.path.isdir(args.input):
        return _run_folder(args)
    if args.command == "decode" and _is_folder_name(args.output):
        from edge_runtime import series

        r = series.decode_series(args.input, args.output, force=args.force, bundle=args.bundle,
                                 kernels=args.kernels, jobs=args.jobs)
        print(f"{r['output']}: {r['slices']} DICOM slice(s) of {r['rows']} x {r['cols']}")
        return 0
    if getattr(args, "scheduler", None) is not None:
        raise ValueError("--scheduler codes folders; for one file run without it")
    if args.command == "encode":
        r = runtime.encode_file(args.input, args.output, **_encode_options(args), bundle=args.bundle,
                                force=args.force, kernels=args.kernels, jobs=args.jobs)
        how = f"quality {r['quality']}" if r["mode"] == "lossy" else r["mode"]
        reached = ""
        if "target" in r:
            t = r["target"]
            reached = (f", PSNR {r['psnr']:.2f} dB (target {t['psnr']:g} dB)" if "psnr" in t
                       else f", PSNR {r['psnr']:.2f} dB (target {t['bpp']:g} bpp)")
        print(f"{r['output']}: {r['bytes']} bytes, {r['bpp']:.3f} bpp, ratio {r['ratio']:.2f}:1, {how}{reached}")
    elif args.command == "decode":
        suffix = os.path.splitext(args.output)[1].lower()
        if args.format and suffix not in _FORMAT_SUFFIXES[args.format]:
            raise ValueError(f"{args.output}: --format {args.format} but the name ends in {suffix or 'nothing'!r}; "
                             f"for one file the format follows OUT's extension")
        r = runtime.decode_file(args.input, args.output, force=args.force, bundle=args.bundle,
                                kernels=args.kernels, jobs=args.jobs)
        print(f"{r['output']}: {r['rows']} x {r['cols']}, {r['frames']} frame(s)")
    elif args.command == "info":
        _print_info(runtime.info(args.input, bundle_path=args.bundle))
    else:
        r = runtime.verify(args.input, bundle=args.bundle, kernels=args.kernels)
        print(f"{r['file']}: OK (CRC, model {r['model_id'][:12]}, full decode)")
    return 0


def main(argv=None) -> int:
    # One BLAS thread (edge_runtime.threads), set before numpy loads; a user's own setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = build_parser().parse_args(argv)
    from data.image import InvalidImageError
    from edge_runtime.bitstream import InvalidBitstreamError
    from edge_runtime.bundle import InvalidBundleError

    try:
        return _run(args)
    except BrokenPipeError:  # the reader went away (`| head`): say nothing more, not even at exit
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except (InvalidBitstreamError, InvalidImageError, InvalidBundleError, FileExistsError, ValueError,
            OSError, RuntimeError) as exc:
        msg = _one_line(exc)
        if args.input not in msg:  # always the input, also when writing the output failed
            msg = f"{args.input}: {msg}"
        print(f"edge-codec {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"edge-codec {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # never a traceback: say what failed and where
        print(f"edge-codec {args.command}: internal error on {args.input}: {type(exc).__name__}: "
              f"{_one_line(exc)}", file=sys.stderr)
        return EXIT_INTERNAL


def _silence_stdout() -> None:
    """Point stdout at the null device, so the interpreter's final flush raises no second BrokenPipeError."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


def run(argv=None) -> None:
    """The console script: `main`, then the interpreter's exit without its teardown (`exit_now`)."""
    exit_now(main(argv))


def exit_now(code: int) -> None:
    """Exit with `code` as the interpreter would, less the teardown of every module it loaded.

    What an exit must do is done first, in the interpreter's own order: threads still running are waited for
    (with the callbacks registered for then, concurrent.futures' among them), the atexit functions run (helper
    processes stopped, logging flushed) and stdout and stderr are flushed. What is left, freeing every module
    and object (pydicom's dictionaries, numpy), takes 40-80 ms here and changes nothing outside the process.
    Where the interpreter lacks the hooks used (not CPython), it exits the usual way."""
    import atexit
    import threading

    code = int(code or 0)
    shutdown, run_exitfuncs = getattr(threading, "_shutdown", None), getattr(atexit, "_run_exitfuncs", None)
    if shutdown is None or run_exitfuncs is None:
        sys.exit(code)
    shutdown()
    run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # the reader went away after the last write: as main says it
            code = code or EXIT_BROKEN_PIPE
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
