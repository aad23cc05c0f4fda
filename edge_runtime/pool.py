"""Worker processes for the planes of one large image (a cine loop, a multi-frame series).

A multi-frame image is coded plane by plane; the planes are independent, so `PlanePool.map`
runs codec.encode_plane / codec.decode_plane over them in `jobs` spawned workers, each of which
loads the model bundle once (never shared across a fork: TFLite interpreters hold threads). At
most 2 x jobs planes are in flight, so memory stays bounded however many frames there are, and
results come back in plane order: the stream (and the decoded image) is the same bytes as with
no pool. An error in a worker (a corrupt tile) is raised in the caller.
"""
from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor

from edge_runtime.threads import available_cpus

MIN_PLANES = 8
"""Images with fewer planes are coded in the calling process (starting workers costs about a second)."""

_coder = None


def default_jobs(planes: int) -> int:
    """Worker processes for an image of `planes` planes: one per CPU, 1 (no pool) for small images."""
    if planes < MIN_PLANES:
        return 1
    return max(1, min(available_cpus(), planes // (MIN_PLANES // 2)))


def _init(bundle_path: str, kernels: str) -> None:
    global _coder
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from edge_runtime.runtime import load_worker_codec

    _coder = load_worker_codec(bundle_path, kernels=kernels)[1]


def _task(fn, item, options: dict, keyword: bool):
    return fn(coder=_coder, **item, **options) if keyword else fn(item, coder=_coder, **options)


class PlanePool:
    """`jobs` spawned workers holding the codec of `bundle_path`; use as a context manager."""

    def __init__(self, bundle_path, kernels: str = "xnnpack", jobs: int = 2):
        if int(jobs) < 1:
            raise ValueError(f"jobs must be at least 1, got {jobs!r}")
        self.jobs = int(jobs)
        self._pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init, initargs=(str(bundle_path), kernels))

    def map(self, fn, items, options: dict, keyword: bool = False):
        """fn(item, coder=..., **options) (or fn(coder=..., **item, **options)) for each item, in order."""
        pending = deque()
        for item in items:
            pending.append(self._pool.submit(_task, fn, item, options, keyword))
            if len(pending) >= 2 * self.jobs:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "PlanePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
