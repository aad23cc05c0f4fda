"""Folder batches on a Dask distributed cluster (what `edge-codec encode|decode DIR OUTDIR --scheduler ADDRESS` runs).

The planning is edge_runtime.batch's, unchanged: the same output names, skip-if-done resume, the
OUTDIR lock, the removal of stale temporary files and the summary. Only the coding of the files to
do moves to the cluster's workers, one task per input file (a series or a huge image is one task,
like one file in the local batch). Inputs and outputs are paths: every worker must reach DIR and
OUTDIR under the same names (a shared file system). Workers write each output atomically, so a
worker killed mid-file leaves no partial output: Dask runs its tasks again on another worker, and
the temporary file it left is removed when the batch ends. A task whose workers keep dying
(distributed's ``allowed-failures``, 3 by default) is recorded as failed, like any bad file.

``scheduler``: a scheduler address (``tcp://host:8786``, ``host:8786``), a scheduler file (JSON, as
dask-jobqueue and ``dask scheduler --scheduler-file`` write), or ``local:N`` for a LocalCluster of
N worker processes (one thread each) on this machine (``local``: one per CPU). Nothing is written
when the scheduler cannot be reached within CONNECT_TIMEOUT seconds (ConnectionError).

Each worker thread loads the codec once (the first task it runs), not once per file; TFLite
interpreters are not shared between threads. The client (this process) plans, hands out at most a
few tasks per worker thread at a time, reports progress as files finish and writes
``batch_summary.json`` once, with ``scheduler``, ``cluster_workers`` (workers when the batch
started) and ``workers_used`` (workers that returned a file) besides the local batch's fields.
Ctrl-C cancels the tasks not yet started (those running on workers finish their complete outputs);
a rerun resumes, skipping what is done. ``distributed`` is an optional dependency
(``pip install "keras-codec[cluster]"``): it is imported only here, when a scheduler is given.
"""
from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from edge_runtime import batch
from edge_runtime import bitstream as bs
from edge_runtime import runtime

__all__ = ["CONNECT_TIMEOUT", "run"]

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for the scheduler before giving up (nothing written)."""
_IN_FLIGHT_PER_THREAD = 4  # tasks queued per worker thread: hide the round trip to the scheduler


def run(kind: str, in_dir: Path, out_dir: Path, plan, options: dict, bundle, kernels: str, on_file,
        settings: dict, scheduler: str, connect_timeout: Optional[float] = None) -> dict:
    """Code ``plan`` (edge_runtime.batch._plan) on the cluster at ``scheduler``; returns the summary."""
    if bundle is not None and not isinstance(bundle, (str, os.PathLike)):
        raise ValueError("a loaded bundle or (Bundle, PlaneCoder) pair cannot be sent to cluster workers; "
                         "give the bundle folder (a path every worker can read), or None for the default")
    bundle = None if bundle is None else str(Path(bundle).resolve())
    timeout = CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
    client, local = _connect(scheduler, timeout)  # before anything is written
    try:
        batch._writable_output(out_dir)
        lock = batch._lock(out_dir)
        try:
            return _run_locked(client, kind, in_dir, out_dir, plan, options, bundle, kernels, on_file,
                               {**settings, "scheduler": _address(client, scheduler, local)})
        finally:
            batch._unlock(lock, out_dir)
    finally:
        client.close()
        if local is not None:
            local.close()


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise RuntimeError("--scheduler needs Dask's distributed package, which is not installed; "
                           "pip install \"keras-codec[cluster]\" (or run without --scheduler)") from None
    return distributed


def _connect(scheduler: str, timeout: float):
    """A Client on ``scheduler`` (module docstring), and the LocalCluster started for ``local:N`` (or None)."""
    distributed = _import_distributed()
    text = str(scheduler).strip()
    if text == "local" or text.startswith("local:"):
        n = text[len("local:"):] if ":" in text else str(batch.default_jobs())
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--scheduler {scheduler!r}: expected local:N with N worker processes (at least 1), "
                             f"or a scheduler address such as tcp://host:8786")
        cluster = distributed.LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address="127.0.0.1:0")
        try:
            return distributed.Client(cluster, timeout=timeout), cluster
        except BaseException:
            cluster.close()
            raise
    if not text:
        raise ValueError("--scheduler: empty address; give tcp://host:8786, a scheduler file or local:N")
    try:
        if text.lower().endswith(".json"):
            if not os.path.isfile(text):
                raise FileNotFoundError(f"{text}: no such scheduler file")
            return distributed.Client(scheduler_file=text, timeout=timeout), None
        return distributed.Client(text, timeout=timeout), None
    except (OSError, TimeoutError, ValueError) as exc:
        detail = " ".join((str(exc) or type(exc).__name__).split())
        raise ConnectionError(f"cannot reach the Dask scheduler at {text} within {timeout:g} s ({detail}); check "
                              f"that it runs and the address is right; nothing was written") from None


def _address(client, scheduler: str, local) -> str:
    return f"{scheduler} ({local.scheduler_address})" if local is not None else client.scheduler.address


def _workers(client) -> tuple:
    """(workers, threads) the scheduler knows now."""
    threads = client.nthreads()
    return len(threads), sum(threads.values())


def _run_locked(client, kind, in_dir, out_dir, plan, options, bundle, kernels, on_file, settings) -> dict:
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    t0 = time.monotonic()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    stale = batch._remove_stale_tmp(out_dir)
    tally = batch._Tally(len(plan.tasks) + len(plan.skipped) + len(plan.failed), len(plan.tasks))
    records, folders, used = [], {}, set()
    n_workers, n_threads = _workers(client)

    def finish(record: dict, worked: bool) -> None:
        records.append(record)
        tally.add(record, worked)
        if on_file is not None:
            on_file(record, tally.snapshot())

    def submit(task):
        problem = batch._prepare_folder(task.dst.parent, out_dir, folders)
        if problem:
            finish({**task.record, "output": None, "status": "failed", "reason": problem}, worked=False)
            return None
        return client.submit(_work, kind, options, bundle, kernels, str(task.src), str(task.dst), task.overwrite,
                             pure=False, key=f"edge-codec-{kind}-{os.getpid()}-{id(task):x}-{time.time_ns():x}")

    interrupted = None
    running = {}
    previous = batch._on_sigterm()
    try:
        for record in plan.skipped + plan.failed:
            finish(record, worked=False)
        queue = sorted(plan.tasks, key=lambda t: -t.record["bytes_in"])  # no big file left for last
        queue.reverse()  # pop() from the end: biggest first
        window = max(2, _IN_FLIGHT_PER_THREAD * max(n_threads, 1))
        pending = as_completed()

        def refill():
            while queue and len(running) < window:
                task = queue.pop()
                future = submit(task)
                if future is not None:
                    running[future] = task
                    pending.add(future)

        refill()
        while running:
            future = next(pending)
            task = running.pop(future)
            try:
                result = future.result()
            except KilledWorker:
                result = {"status": "failed", "reason": "the worker processes running it died each time it was "
                                                        "tried (a crash, or out of memory)"}
            except Exception as exc:  # a task that raised: internal, the file's record says so
                result = {"status": "failed", "reason": batch._reason(exc, task.src)}
            if "fatal" in result:
                raise RuntimeError(f"a cluster worker could not load the codec: {result['fatal']}")
            if "worker" in result:
                used.add(result.pop("worker"))
            finish({**task.record, **result}, worked=True)
            refill()
    except KeyboardInterrupt:
        interrupted = "SIGINT"
    except batch.Terminated:
        interrupted = "SIGTERM"
    finally:
        batch._restore_sigterm(previous)
        if running:  # not started yet: gone; running on a worker: finishes its (complete, atomic) output
            client.cancel(list(running))
    if interrupted is None:
        # every task has ended: what is left is a killed worker's temporary file, never a live one
        stale += batch._remove_stale_tmp(out_dir)
    summary = batch._summary(kind, in_dir, out_dir, tally.total, records, time.monotonic() - t0, started,
                             n_threads, n_workers, settings, interrupted, stale)
    summary.update(worker_processes=n_workers, cluster_workers=n_workers, cluster_threads=n_threads,
                   workers_used=len(used))
    data = (json.dumps(summary, indent=1) + "\n").encode()
    bs.atomic_write_bytes(out_dir / batch.SUMMARY_NAME, data, overwrite=True)
    return summary


# ---- on the workers ------------------------------------------------------------------------------

_codecs = threading.local()


def _codec(bundle, kernels: str):
    """This worker thread's codec for (bundle, kernels), loaded on its first task."""
    cache = getattr(_codecs, "cache", None)
    if cache is None:
        cache = _codecs.cache = {}
    key = (bundle, kernels)
    if key not in cache:
        cache[key] = runtime.load_worker_codec(bundle, kernels=kernels)
    return cache[key]


def _work(kind: str, options: dict, bundle, kernels: str, src: str, dst: str, overwrite: bool) -> dict:
    """One file, on a worker: batch._code_one with this thread's codec (a record, never an exception)."""
    try:
        codec = _codec(bundle, kernels)
    except Exception as exc:
        return {"fatal": " ".join((str(exc) or type(exc).__name__).split())}
    src, dst = Path(src), Path(dst)
    if not overwrite and dst.exists() and batch._output_complete(src, dst):
        # an earlier attempt of this task wrote it (atomically) before its worker was lost
        result = {"status": "ok", "bytes_out": batch._size(dst), "seconds": 0.0}
    else:
        # a series folder a lost worker left half-written: its slices are this stream's, written again
        overwrite = overwrite or (dst.is_dir() and kind == "decode")
        result = batch._code_one(kind, codec, src, dst, overwrite, options)
    try:
        from distributed import get_worker

        result["worker"] = get_worker().address
    except (ImportError, ValueError):
        pass
    return result
