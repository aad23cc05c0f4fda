"""Folder trees through the edge codec (what `edge-codec encode|decode DIR OUTDIR` runs), TensorFlow-free.

    encode_folder  every image under DIR (data.readers.list_images) -> .kcd under OUTDIR
    decode_folder  every *.kcd under DIR -> .dcm / .png / .tif under OUTDIR

The relative layout is kept. Output names, per folder:

- encode: ``x.dcm -> x.kcd`` (the image suffix is replaced; an extension-less DICOM ``IM0001``
  gives ``IM0001.kcd``). When two images of one folder would get the same name (``x.dcm`` and
  ``x.png``), each of them keeps its full name instead: ``x.dcm.kcd``, ``x.png.kcd``.
- decode: the format is ``fmt`` when given, else chosen by the stream: ``dcm`` when it carries a
  DICOM header, ``tif`` for several frames, ``png`` otherwise. ``x.kcd -> x.<fmt>``; a name that
  already ends in an image suffix has it replaced, so ``x.dcm.kcd -> x.dcm`` (the inverse of the
  clash rule above). When two streams would get the same name, each keeps its full name:
  ``x.dcm.kcd -> x.dcm.png``, ``x.png.kcd -> x.png.png``.

Names are compared ignoring case (as a Windows or macOS file system would); names that still
clash (they differ only in case) are reported as failures, never written over each other.

Series (edge_runtime.series): with ``series=True`` encode_folder codes each immediate subfolder of
DIR as one series (one task, ``SUB/ -> SUB.kcd``; files directly in DIR and deeper subfolders are not
read). decode_folder writes a series stream to a folder of DICOM slices, ``x.kcd -> x/`` (with
``fmt`` "tif" to one multi-page TIFF instead), complete when every slice file the stream names is
there. A series is one task in local worker processes and on a Dask cluster alike; its bytes in or
out are those of the files directly in its folder.

Resuming: an output that exists is skipped (outputs are written atomically, so an existing one is
complete), except a .kcd that edge_runtime.bitstream.parse refuses, which is encoded again.
``force`` re-does everything. Planning reads each existing .kcd output (encode) or each input
stream (decode, for its format) once, in the calling process.

Work runs in ``jobs`` worker processes (`worker_context`: forked while this process runs one thread,
spawned otherwise; each loads the codec once, after it starts, with one TFLite thread), or in this
process when ``jobs`` is 1 or only one file is left to do. One bad file never stops the batch: it is
recorded as failed with a one-line reason. A worker that dies (a crash, out of memory) costs only
its file: the files it may have held are re-run one at a time at the end, and the one that kills its
worker again is recorded as failed. Ctrl-C lets the files in progress finish (their outputs are
complete), then stops; SIGTERM (a supervisor, ``kill PID``) stops the workers at once (a file in
progress leaves no output). Either way the summary says ``interrupted`` (``interrupted_by``: SIGINT
or SIGTERM). Workers also end when this process dies without a word (SIGKILL): they watch their
parent.

Files and folders: symbolic links that lead out of DIR are not followed (``follow_symlinks``
allows it), and nothing is ever written outside OUTDIR: an output folder that is a link out of
it fails its files. Error messages never quote a file's content. An empty DIR is an error, and
OUTDIR is made only when there is something to do. Before any file is coded, OUTDIR is checked
to be writable and locked (``.edge-codec.lock``: a second run into the same OUTDIR stops at once,
saying so), and the hidden temporary files a killed run left there (``.NAME.XXXXXXXX.tmp``) are
removed.

The summary (returned, and written atomically to ``OUTDIR/batch_summary.json``, replacing the
previous run's) counts files ok / skipped / failed, bytes in and out and their ratio over the files
coded, wall time, throughput (files and input MB, 10^6 bytes, per second over the files this run
worked on), the failures with their reasons and one record per file.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from data.readers import list_images
from edge_runtime import OUTPUT_FORMATS
from edge_runtime import bitstream as bs
from edge_runtime import runtime, series
from edge_runtime.threads import available_cpus

__all__ = ["FORMATS", "LOCK_NAME", "SUMMARY_NAME", "Terminated", "decode_folder", "default_jobs", "encode_folder",
           "worker_context"]

SUMMARY_NAME = "batch_summary.json"
LOCK_NAME = ".edge-codec.lock"
_STALE_TMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # data.writers.atomic_write's temporary files
_OUT_OF_TREE = ("not followed: a symbolic link that leads out of the input folder "
                "(follow_symlinks / --follow-symlinks codes it)")
FORMATS = OUTPUT_FORMATS
MB = 1e6
_IMAGE_SUFFIXES = runtime.DECODE_SUFFIXES
_RESERVED = ("in_path", "out_path", "bundle", "force", "kernels")
_IN_FLIGHT_PER_JOB = 2  # tasks queued per worker: enough to keep it busy, few to lose on a crash

OnFile = Callable[[dict, dict], None]
"""Called after each file with its record (the summary's ``files`` entry) and a progress snapshot:
done, total, ok, skipped, failed, elapsed (s), files_per_second and mb_per_second (files worked on
this run), eta (s, or None before the first file is done)."""


def default_jobs() -> int:
    """The CPUs this process may run on."""
    return available_cpus()


def worker_context():
    """The multiprocessing context for a batch's workers: "fork" on Linux while this process runs one thread,
    "spawn" otherwise.

    A forked worker starts with the modules its parent has imported (about 0.17 s of CPU less per worker than a
    spawned one, which starts a new interpreter and imports numpy and the codec again); it still loads its own
    models. A fork copies only the thread that calls it, so with other threads running (a TFLite interpreter's
    thread pool, BLAS threads, a caller's threads) it could copy a lock one of them holds: then workers are spawned.
    Threads are counted from /proc/self/task, which sees those that Python's threading module does not.

    Only a batch forks: its process holds little beyond its modules while workers run. A plane pool
    (edge_runtime.pool) spawns: its parent holds the whole image, and pages it rewrites after a fork would be
    copied, not shared."""
    if sys.platform.startswith("linux") and _threads() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _threads() -> int:
    """The threads of this process (0 when the OS does not say)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


def encode_folder(in_dir, out_dir, *, encode_options: Optional[dict] = None, jobs: Optional[int] = None,
                  force: bool = False, bundle=None, kernels: str = "xnnpack",
                  on_file: Optional[OnFile] = None, follow_symlinks: bool = False,
                  scheduler: Optional[str] = None, series: bool = False) -> dict:
    """Encode every image under ``in_dir`` to ``out_dir`` (same layout); returns the summary.

    ``encode_options`` are passed as keyword arguments to runtime.encode_file (``quality``, ...).
    ``bundle``: a bundle folder, None for the default, or (with ``jobs=1`` only) a loaded
    (Bundle, PlaneCoder) pair. ``follow_symlinks``: also code files that links lead to outside
    ``in_dir`` (their outputs still land under ``out_dir``). ``scheduler``: code the files on a Dask
    cluster instead of local workers (edge_runtime.cluster; ``jobs`` is then unused). ``series``: each
    immediate subfolder of ``in_dir`` is one series, coded into one stream (module docstring).
    """
    options = dict(encode_options or {})
    clash = sorted(set(options) & set(_RESERVED))
    if clash:
        raise ValueError(f"encode_options cannot set {', '.join(clash)}: they are encode_folder's own arguments")
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    exclude = _check_folders(in_dir, out_dir)
    if series:
        found = _series_folders(in_dir, exclude)
        if not found:
            raise FileNotFoundError(f"{in_dir}: no subfolders to code as series (hidden ones are skipped): "
                                    f"nothing to do, nothing written")
        files, outside = _inside(found, in_dir, follow_symlinks)
        name = lambda p: p.name + ".kcd"
        plan = _plan(files, in_dir, out_dir, force, lambda ps: _assign_names(ps, name, name), _output_complete)
        plan.failed += [_record(p, in_dir, None, out_dir, "failed", reason=_OUT_OF_TREE) for p in outside]
        return _run("encode", in_dir, out_dir, plan, options, jobs, bundle, kernels, on_file,
                    {"encode_options": options, "series": True}, scheduler)
    found = [p for p in list_images(in_dir) if not _excluded(p, in_dir, exclude)]
    if not found:
        raise FileNotFoundError(f"{in_dir}: no images found (DICOM, PNG or TIFF; hidden files and folders are "
                                f"skipped): nothing to do, nothing written")
    files, outside = _inside(found, in_dir, follow_symlinks)
    plan = _plan(files, in_dir, out_dir, force, _encode_names, _output_complete)
    plan.failed += [_record(p, in_dir, None, out_dir, "failed", reason=_OUT_OF_TREE) for p in outside]
    return _run("encode", in_dir, out_dir, plan, options, jobs, bundle, kernels, on_file, {"encode_options": options},
                scheduler)


def decode_folder(in_dir, out_dir, *, fmt: Optional[str] = None, jobs: Optional[int] = None, force: bool = False,
                  bundle=None, kernels: str = "xnnpack", on_file: Optional[OnFile] = None,
                  follow_symlinks: bool = False, scheduler: Optional[str] = None) -> dict:
    """Decode every .kcd under ``in_dir`` to ``out_dir`` (same layout); returns the summary.

    ``fmt``: "dcm", "png" or "tif" for every file, or None to choose per stream (module docstring).
    ``scheduler``: as for encode_folder.
    """
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)} (or None: chosen per stream), got {fmt!r}")
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    exclude = _check_folders(in_dir, out_dir)
    found = _find_streams(in_dir, exclude)
    if not found:
        raise FileNotFoundError(f"{in_dir}: no .kcd streams found (hidden files and folders are skipped): "
                                f"nothing to do, nothing written")
    files, outside = _inside(found, in_dir, follow_symlinks)
    formats, unreadable = {}, {p: _OUT_OF_TREE for p in outside}
    for p in files:
        if fmt is not None:
            formats[p] = fmt
            if fmt != "dcm":
                continue
        try:
            formats[p] = _stream_format(p, fmt)
        except (ValueError, OSError) as exc:
            unreadable[p] = _reason(exc, p)
    plan = _plan([p for p in files if p in formats], in_dir, out_dir, force,
                 lambda ps: _decode_names(ps, formats), _output_complete)
    plan.failed += [_record(p, in_dir, None, out_dir, "failed", reason=r) for p, r in unreadable.items()]
    return _run("decode", in_dir, out_dir, plan, {}, jobs, bundle, kernels, on_file, {"format": fmt or "auto"},
                scheduler)


# ---- planning -----------------------------------------------------------------------------------

@dataclass
class _Task:
    src: Path
    dst: Path
    overwrite: bool
    record: dict  # filled in as the file is done


@dataclass
class _Plan:
    tasks: list
    skipped: list
    failed: list


def _check_folders(in_dir: Path, out_dir: Path) -> Optional[tuple]:
    """Refuse folder pairs that would mix outputs with inputs; the parts of OUTDIR inside DIR, if it is."""
    if not in_dir.exists():
        raise FileNotFoundError(f"{in_dir}: no such folder")
    if not in_dir.is_dir():
        raise NotADirectoryError(f"{in_dir}: not a folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: is a file; IN is a folder, so OUT must be a folder (new or existing)")
    src, dst = Path(os.path.realpath(in_dir)), Path(os.path.realpath(out_dir))
    if src == dst:
        raise ValueError(f"{out_dir}: is the input folder; write the outputs to another folder "
                         f"(a new subfolder of it is fine)")
    if dst in src.parents:
        raise ValueError(f"{out_dir}: contains the input folder {in_dir}, so outputs could land among the inputs; "
                         f"choose an output folder outside it (or a new subfolder of the input folder)")
    return dst.relative_to(src).parts if src in dst.parents else None


def _inside(paths: list, root: Path, follow_symlinks: bool) -> tuple:
    """(paths to code, paths that are links leading out of ``root``); all of them to code when following."""
    if follow_symlinks:
        return list(paths), []
    top = os.path.realpath(root)
    inside, outside = [], []
    for p in paths:
        (inside if _within(os.path.realpath(p), top) else outside).append(p)
    return inside, outside


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def _excluded(path: Path, root: Path, exclude: Optional[tuple]) -> bool:
    """Whether ``path`` (found under ``root``) lies in the output folder ``exclude`` (parts relative to root)."""
    return exclude is not None and path.relative_to(root).parts[:len(exclude)] == exclude


def _find_streams(root: Path, exclude: Optional[tuple]) -> list:
    """Every *.kcd under ``root`` (sorted), skipping hidden files and folders and the output folder."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not _excluded(here / d, root, exclude)]
        found += [here / n for n in filenames if not n.startswith(".") and n.lower().endswith(".kcd")]
    return sorted(found)


SERIES = "series"
"""The 'format' of a series stream decoded to a folder of DICOM slices."""


def _stream_format(path: Path, fmt: Optional[str] = None) -> str:
    """The output format of a stream: ``fmt`` when given (a series stream asked for "dcm" gives SERIES),
    else chosen by the stream (module docstring)."""
    header, _, metadata = bs.parse(path.read_bytes(), source=path)
    if series.is_series(header, metadata, path) and fmt in (None, "dcm"):
        return SERIES
    if fmt is not None:
        return fmt
    return "dcm" if metadata is not None else "tif" if header.frames > 1 else "png"


def _strip_image_suffix(name: str) -> str:
    stem, suffix = os.path.splitext(name)
    return stem if suffix.lower() in _IMAGE_SUFFIXES else name


def _encode_names(paths: list) -> dict:
    return _assign_names(paths, lambda p: Path(p.name).stem + ".kcd", lambda p: p.name + ".kcd")


def _decode_names(paths: list, formats: dict) -> dict:
    def base(p):
        return p.name[:-len(".kcd")]
    def short(p):
        return _strip_image_suffix(base(p)) + ("" if formats[p] == SERIES else f".{formats[p]}")

    def full(p):
        return base(p) + ("" if formats[p] == SERIES else f".{formats[p]}")

    return _assign_names(paths, short, full)


def _assign_names(paths: list, short, full) -> dict:
    """Output name per input of one folder: ``short(p)`` unless that clashes, then ``full(p)``.

    ``full`` never clashes with another ``full`` except by case, so this ends; what still clashes
    maps to None.
    """
    names = {p: short(p) for p in paths}
    while True:
        counts = Counter(n.lower() for n in names.values())
        clashing = [p for p in paths if counts[names[p].lower()] > 1 and names[p] != full(p)]
        if not clashing:
            return {p: (n if counts[n.lower()] == 1 else None) for p, n in names.items()}
        for p in clashing:
            names[p] = full(p)


def _plan(files: list, in_dir: Path, out_dir: Path, force: bool, namer, complete) -> _Plan:
    """Output path of each file, and whether it is to do, already done (skipped) or impossible."""
    plan = _Plan([], [], [])
    folders = {}
    for p in files:
        folders.setdefault(p.parent, []).append(p)
    for folder, paths in folders.items():
        names = namer(paths)
        rel_folder = folder.relative_to(in_dir)
        for p in paths:
            if names[p] is None:
                others = [q.name for q in paths if q != p and (names[q] is None)]
                plan.failed.append(_record(p, in_dir, None, out_dir, "failed",
                                           reason=f"its output name clashes with that of {', '.join(others)} "
                                                  f"(names differing only in case); rename one"))
                continue
            dst = out_dir / rel_folder / names[p]
            if _leaves(dst.parent, out_dir) or (os.path.lexists(dst) and _leaves(dst, out_dir)):
                where = dst.parent if _leaves(dst.parent, out_dir) else dst
                plan.failed.append(_record(p, in_dir, None, out_dir, "failed", reason=_leaving(where, out_dir)))
                continue
            if dst.exists() and not force and complete(p, dst):
                plan.skipped.append(_record(p, in_dir, dst, out_dir, "skipped", bytes_out=_size(dst)))
            else:
                plan.tasks.append(_Task(p, dst, dst.exists(), _record(p, in_dir, dst, out_dir, "ok")))
    return plan


def _leaves(folder: Path, out_dir: Path) -> bool:
    """Whether ``folder`` (under ``out_dir`` by name) really lies elsewhere: a part of it is a link out."""
    return not _within(os.path.realpath(folder), os.path.realpath(out_dir))


def _leaving(folder: Path, out_dir: Path) -> str:
    return (f"not written: its output folder {folder} is a symbolic link that leads out of {out_dir}, and nothing "
            f"is written outside the output folder")


def _kcd_complete(path: Path) -> bool:
    try:
        bs.parse(path.read_bytes(), source=path)
        return True
    except (ValueError, OSError):
        return False


def _output_complete(src: Path, dst: Path) -> bool:
    """Whether an existing output needs no redoing: a .kcd that parses, a series folder holding every slice
    its stream names, any other decoded file (written atomically, so whole)."""
    if dst.suffix.lower() == ".kcd":
        return _kcd_complete(dst)
    if dst.is_dir():
        try:
            header, _, metadata = bs.parse(src.read_bytes(), source=src)
            names = series.output_names(series.unpack_headers(metadata, src).names)
        except (ValueError, OSError):
            return False
        return all((dst / n).is_file() for n in names)
    return dst.is_file()


def _series_folders(root: Path, exclude: Optional[tuple]) -> list:
    """The immediate subfolders of ``root`` (sorted), skipping hidden ones and the output folder."""
    return sorted(Path(e.path) for e in os.scandir(root)
                  if e.is_dir() and not e.name.startswith(".") and not _excluded(Path(e.path), root, exclude))


def _size(path: Path) -> int:
    """A file's bytes; a folder's (a series): those of the files directly in it."""
    try:
        if path.is_dir():
            return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def _record(src: Path, in_dir: Path, dst: Optional[Path], out_dir: Path, status: str, **extra) -> dict:
    return {"input": src.relative_to(in_dir).as_posix(),
            "output": None if dst is None else dst.relative_to(out_dir).as_posix(),
            "status": status, "bytes_in": _size(src), "bytes_out": 0, **extra}


def _reason(exc: BaseException, src) -> str:
    """One line saying why a file failed, without repeating its name."""
    text = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
    if src is not None and text.startswith(f"{src}: "):
        text = text[len(f"{src}: "):]
    if not isinstance(exc, (ValueError, OSError, RuntimeError)):
        text = f"internal error: {type(exc).__name__}: {text}"
    return " ".join(text.split())


# ---- running ------------------------------------------------------------------------------------

class _Tally:
    """Counts and rates so far; ``snapshot()`` is what ``on_file`` receives."""

    def __init__(self, total: int, to_do: int):
        self.total, self.to_do, self.t0 = total, to_do, time.monotonic()
        self.status = Counter()
        self.worked = self.worked_bytes = 0

    def add(self, record: dict, worked: bool) -> None:
        self.status[record["status"]] += 1
        if worked:
            self.worked += 1
            self.worked_bytes += record["bytes_in"]

    def snapshot(self) -> dict:
        elapsed = time.monotonic() - self.t0
        rate = self.worked / elapsed if elapsed > 0 else 0.0
        return {"done": sum(self.status.values()), "total": self.total, "ok": self.status["ok"],
                "skipped": self.status["skipped"], "failed": self.status["failed"], "elapsed": elapsed,
                "files_per_second": rate, "mb_per_second": self.worked_bytes / MB / elapsed if elapsed > 0 else 0.0,
                "eta": (self.to_do - self.worked) / rate if rate > 0 else None}


class Terminated(BaseException):
    """SIGTERM arrived during a batch (raised in the main thread by the handler _run installs)."""


def _run(kind: str, in_dir: Path, out_dir: Path, plan: _Plan, options: dict, jobs: Optional[int], bundle,
         kernels: str, on_file: Optional[OnFile], settings: dict, scheduler: Optional[str] = None) -> dict:
    if scheduler is not None:  # distributed is imported only there
        from edge_runtime import cluster

        return cluster.run(kind, in_dir, out_dir, plan, options, bundle, kernels, on_file, settings, scheduler)
    jobs = default_jobs() if jobs is None else int(jobs)
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if isinstance(bundle, tuple) and jobs > 1 and len(plan.tasks) > 1:
        raise ValueError("a loaded (Bundle, PlaneCoder) pair works only in this process (jobs=1); "
                         "give the bundle folder to use worker processes")
    _writable_output(out_dir)
    lock = _lock(out_dir)
    try:
        return _run_locked(kind, in_dir, out_dir, plan, options, jobs, bundle, kernels, on_file, settings)
    finally:
        _unlock(lock, out_dir)


def _run_locked(kind, in_dir, out_dir, plan, options, jobs, bundle, kernels, on_file, settings) -> dict:
    t0 = time.monotonic()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    stale = _remove_stale_tmp(out_dir)
    tally = _Tally(len(plan.tasks) + len(plan.skipped) + len(plan.failed), len(plan.tasks))
    records = []

    def finish(record: dict, worked: bool) -> None:
        records.append(record)
        tally.add(record, worked)
        if on_file is not None:
            on_file(record, tally.snapshot())

    def done(task: _Task, result: dict) -> None:
        finish({**task.record, **result}, worked=True)

    def ready(task: _Task) -> bool:
        """Make the task's output folder, inside OUTDIR and writable, or record why not (before coding)."""
        problem = _prepare_folder(task.dst.parent, out_dir, folders)
        if problem:
            finish({**task.record, "output": None, "status": "failed", "reason": problem}, worked=False)
        return not problem

    folders = {}
    interrupted = None
    workers = min(jobs, len(plan.tasks))
    start_methods = set()
    previous = _on_sigterm()
    try:
        for record in plan.skipped + plan.failed:
            finish(record, worked=False)
        if workers <= 1:
            codec = bundle if isinstance(bundle, tuple) else runtime.load_codec(bundle, kernels=kernels)
            for task in plan.tasks:
                if ready(task):
                    done(task, _code_one(kind, codec, task.src, task.dst, task.overwrite, options))
        else:
            args = (kind, options)
            biggest_first = sorted(plan.tasks, key=lambda t: -t.record["bytes_in"])  # no big file left for last
            suspects = _run_pool(_work, args, biggest_first, workers, (bundle, kernels), done, ready, start_methods)
            for task in suspects:  # alone, so a crash can only be this file's
                # its worker may have written the output before the pool broke and lost the result: an
                # output that was not there when the batch was planned is this batch's own, coded again
                task = replace(task, overwrite=task.overwrite or os.path.lexists(task.dst))
                if _run_pool(_work, args, [task], 1, (bundle, kernels), done, ready, start_methods):
                    done(task, {"status": "failed", "reason": "the worker process died while coding it "
                                                              "(a crash, or out of memory)"})
    except KeyboardInterrupt:
        interrupted = "SIGINT"
    except Terminated:
        interrupted = "SIGTERM"
        # the stopped workers may have been killed mid-write: their temporary files go too
        stale += _remove_stale_tmp(out_dir)
    finally:
        _restore_sigterm(previous)
    summary = _summary(kind, in_dir, out_dir, tally.total, records, time.monotonic() - t0, started, jobs, workers,
                       settings, interrupted, stale, start_methods)
    data = (json.dumps(summary, indent=1) + "\n").encode()
    bs.atomic_write_bytes(out_dir / SUMMARY_NAME, data, overwrite=True)
    return summary


def _on_sigterm():
    """Turn SIGTERM into Terminated in the main thread (once: cleaning up is not interrupted again);
    returns the handler to restore, or None where signals cannot be handled (another thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    fired = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _writable_output(out_dir: Path) -> None:
    """Make OUTDIR and prove it takes a file, before anything is coded (OSError saying so otherwise)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".edge-codec-probe.", suffix=".tmp", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(exc.errno, f"{out_dir}: cannot write to the output folder "
                                         f"({exc.strerror or exc}); nothing was coded") from None


def _prepare_folder(folder: Path, out_dir: Path, seen: dict) -> Optional[str]:
    """Create an output folder (once) and check it is inside OUTDIR and takes a file; the problem, or None."""
    if folder not in seen:
        problem = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if _leaves(folder, out_dir):
                problem = _leaving(folder, out_dir)
            else:
                fd, probe = tempfile.mkstemp(prefix=".edge-codec-probe.", suffix=".tmp", dir=folder)
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            problem = f"cannot write to its output folder {folder} ({exc.strerror or exc}); not coded"
        seen[folder] = problem
    return seen[folder]


def _lock(out_dir: Path):
    """Hold OUTDIR's lock file (flock), or stop: another run writes there. None where flock is missing."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    path = out_dir / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RuntimeError(f"{out_dir}: another edge-codec run (process {holder}) is writing to this output "
                               f"folder; wait for it to finish, or choose another output folder") from None
        except OSError:  # a file system without flock: go on unlocked
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed it between our open and flock: take the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _unlock(fd, out_dir: Path) -> None:
    if fd is None:
        return
    try:
        os.unlink(out_dir / LOCK_NAME)
    except OSError:
        pass
    os.close(fd)


def _remove_stale_tmp(out_dir: Path) -> int:
    """Remove the temporary files of killed runs (this run holds the lock, so none is live); how many."""
    removed = 0
    for dirpath, _dirnames, filenames in os.walk(out_dir):  # links to folders are not followed
        for name in filenames:
            if _STALE_TMP.match(name):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
                except OSError:
                    pass
    return removed


def _code_one(kind: str, codec, src: Path, dst: Path, overwrite: bool, options: dict) -> dict:
    """Encode or decode one file; a failure becomes a record, never an exception."""
    t0 = time.perf_counter()
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if kind == "encode":
            # files are the batch's unit of parallel work: no plane workers inside (jobs=1)
            code = series.encode_series if src.is_dir() else runtime.encode_file
            r = code(src, dst, bundle=codec, force=overwrite, jobs=1, **options)
            extra = {"bpp": r["bpp"], "cr": r["ratio"], **({"slices": r["slices"]} if "slices" in r else {})}
        elif dst.suffix.lower() not in _IMAGE_SUFFIXES:  # a series stream: a folder of slices
            r = series.decode_series(src, dst, bundle=codec, force=overwrite, jobs=1)
            extra = {"slices": r["slices"]}
        else:
            runtime.decode_file(src, dst, bundle=codec, force=overwrite, jobs=1)
            extra = {}
        return {"status": "ok", "bytes_out": _size(dst), "seconds": time.perf_counter() - t0, **extra}
    except Exception as exc:  # one bad file never stops the batch
        return {"status": "failed", "reason": _reason(exc, src), "seconds": time.perf_counter() - t0}


_worker_codec = None
_worker_problem = None


def _init_worker(bundle, kernels: str) -> None:
    """Pool initializer: load the codec once per worker (in the worker: never share TFLite across a fork)."""
    global _worker_codec, _worker_problem
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it lets running files finish
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler (a fork keeps it): SIGTERM ends a worker
    _die_with_parent()
    try:
        _worker_codec = runtime.load_worker_codec(bundle, kernels=kernels)
    except Exception as exc:
        _worker_problem = " ".join((str(exc) or type(exc).__name__).split())


def _die_with_parent() -> None:
    """End this worker when the batch process is gone, however it went (even SIGKILL, where it can
    clean up nothing): Linux's parent-death signal, and a thread watching the parent's pid anywhere."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError, TypeError):  # not Linux
        pass

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="edge-codec-parent-watch", daemon=True).start()


def _work(kind: str, options: dict, src: Path, dst: Path, overwrite: bool) -> dict:
    if _worker_codec is None:
        return {"fatal": _worker_problem}
    return _code_one(kind, _worker_codec, src, dst, overwrite, options)


def _run_pool(work, args: tuple, tasks: list, jobs: int, initargs: tuple, done, ready=lambda task: True,
              start_methods: Optional[set] = None) -> list:
    """Run ``work(*args, src, dst, overwrite)`` for each task in ``jobs`` worker processes.

    ``ready(task)`` is asked just before a task is handed out (False: it was recorded, skip it).
    ``start_methods`` collects how the workers were started ("fork" or "spawn", one per pool).
    Returns the tasks that were in a worker, or queued for one, when a worker died: each of them
    may be the cause. A worker whose codec failed to load stops the batch (RuntimeError). On
    Terminated (SIGTERM) the workers are stopped at once; on anything else the running files finish.
    """
    queue, suspects = deque(tasks), []
    while queue:
        ctx = worker_context()  # asked for each pool: spawn while the threads of the one before still end
        if start_methods is not None:
            start_methods.add(ctx.get_start_method())
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=initargs) as pool:
            running = {}
            try:
                while queue or running:
                    while queue and len(running) < _IN_FLIGHT_PER_JOB * jobs:
                        task = queue.popleft()
                        if ready(task):
                            running[pool.submit(work, *args, task.src, task.dst, task.overwrite)] = task
                    if not running:
                        break
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    broken = any(isinstance(f.exception(), BrokenProcessPool) for f in finished)
                    if broken:
                        finished, _ = wait(running)  # a broken pool fails every pending call at once
                    for f in finished:
                        task = running.pop(f)
                        if isinstance(f.exception(), BrokenProcessPool):
                            suspects.append(task)
                            continue
                        result = f.result()
                        if "fatal" in result:
                            raise RuntimeError(result["fatal"])
                        done(task, result)
                    if broken:
                        break  # start a new pool for the rest of the queue
            except BaseException as exc:
                if isinstance(exc, Terminated):
                    for process in list((getattr(pool, "_processes", None) or {}).values()):
                        process.terminate()  # the supervisor wants us gone: no waiting for files in progress
                pool.shutdown(wait=True, cancel_futures=True)
                for f, task in running.items():
                    if f.done() and not f.cancelled() and f.exception() is None and "fatal" not in f.result():
                        done(task, f.result())
                raise
    return suspects


def _summary(kind: str, in_dir: Path, out_dir: Path, total: int, records: list, wall: float, started: str,
             jobs: int, workers: int, settings: dict, interrupted: Optional[str], stale_tmp: int = 0,
             start_methods: frozenset = frozenset()) -> dict:
    """The batch in numbers (module docstring); ``ratio`` is uncompressed : compressed file bytes.

    ``total`` counts the files found; after an interruption (``interrupted_by`` the signal), ``files``
    holds only those finished. ``stale_tmp_removed``: temporary files of killed runs cleaned up.
    ``worker_start``: how local worker processes were started ("fork", "spawn", both as "fork+spawn"); None in
    this process or on a cluster.
    """
    records = sorted(records, key=lambda r: r["input"])
    count = Counter(r["status"] for r in records)
    ok = [r for r in records if r["status"] == "ok"]
    worked = [r for r in records if "seconds" in r]
    bytes_in, bytes_out = sum(r["bytes_in"] for r in ok), sum(r["bytes_out"] for r in ok)
    coded, plain = (bytes_out, bytes_in) if kind == "encode" else (bytes_in, bytes_out)
    wall = max(wall, 1e-9)
    return {
        "command": kind, "input_dir": str(in_dir.resolve()), "output_dir": str(out_dir.resolve()), **settings,
        "jobs": jobs, "worker_processes": workers if workers > 1 else 0,
        "worker_start": "+".join(sorted(start_methods)) or None, "started": started,
        "interrupted": interrupted is not None, "interrupted_by": interrupted, "stale_tmp_removed": stale_tmp,
        "total": total, "ok": count["ok"], "skipped": count["skipped"],
        "failed": count["failed"], "bytes_in": bytes_in, "bytes_out": bytes_out,
        "ratio": round(plain / coded, 4) if coded else None, "wall_seconds": round(wall, 3),
        "files_per_second": round(len(worked) / wall, 3),
        "mb_per_second": round(sum(r["bytes_in"] for r in worked) / MB / wall, 3),
        "failures": [{"input": r["input"], "reason": r["reason"]} for r in records if r["status"] == "failed"],
        "files": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in records],
    }
