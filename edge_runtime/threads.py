"""One BLAS thread for the codec's numpy work, and an allocator that keeps its buffers.

The context network, the refinement's integer convolutions and the lifting run as many small
matrix products (thousands of rows by a few columns). OpenBLAS splits each over its threads,
and waking them costs more than the product: on 2 cores a (65536 x 7) @ (7 x 8) product took
about 40 ms with 2 threads and 2 ms with one. The codec therefore runs its numpy work with one
BLAS thread; TFLite keeps its own threads (`num_threads`), and frames or files run in parallel
in worker processes (edge_runtime.batch).

`edge-codec` sets ``OPENBLAS_NUM_THREADS=1`` before numpy loads (unless the user set it); a
library caller gets the same through threadpoolctl, scoped to each encode or decode.

Every pass of the context model allocates arrays of a few MB. glibc serves blocks that large
with a fresh mmap and returns them on free, so each pass pays for its pages again (page faults
cost most in a virtual machine): `keep_freed_memory` raises glibc's mmap and trim thresholds so
those blocks are reused instead: about 10 % of a decode. Peak memory is unchanged; memory a
decode freed stays with the process for the next one.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os

_controller = None


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def single_blas_thread():
    """Run the body with one BLAS thread (a no-op when OPENBLAS_NUM_THREADS=1 or threadpoolctl is missing)."""
    global _controller
    if os.environ.get("OPENBLAS_NUM_THREADS") == "1":
        yield
        return
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl is in both requirement files
            _controller = False
        else:
            _controller = ThreadpoolController()
    if _controller is False:
        yield
        return
    with _controller.limit(limits=1, user_api="blas"):
        yield


MMAP_THRESHOLD = 64 << 20
"""Blocks below this come from the heap (reused); larger ones (a whole cine) are still mapped."""
TRIM_THRESHOLD = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_tuned = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; False where the C library is not glibc."""
    global _tuned
    if _tuned is None:
        _tuned = False
        if _glibc():
            try:
                libc = ctypes.CDLL(None)
                _tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
                    bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            except (OSError, AttributeError):
                _tuned = False
    return _tuned


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


CACHED_PIXELS = 1 << 21
"""Largest plane (pixels) whose coding geometry is kept between calls: a 512x512 slice's or a cine frame's is
reused by every tile and frame of that size, while a 1760x1760 radiograph's (200 MB of index arrays) would only
sit beside the next stage of its own encode."""


def shape_cache(maxsize: int):
    """Cache fn(shape, *options) for the last `maxsize` calls on shapes of at most CACHED_PIXELS pixels; larger ones
    are computed each time (they are rarely reused, and their index arrays are large)."""
    def wrap(fn):
        cached = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def geometry(shape: tuple, *options):
            return cached(shape, *options) if shape[0] * shape[1] <= CACHED_PIXELS else fn(shape, *options)

        geometry.cache_clear = cached.cache_clear
        return geometry

    return wrap
