"""One BLAS thread for the codec's numpy work.

The context network, the refinement's integer convolutions and the lifting run as many small
matrix products (thousands of rows by a few columns). OpenBLAS splits each over its threads,
and waking them costs more than the product: on 2 cores a (65536 x 7) @ (7 x 8) product took
about 40 ms with 2 threads and 2 ms with one. The codec therefore runs its numpy work with one
BLAS thread; TFLite keeps its own threads (`num_threads`), and frames or files run in parallel
in worker processes (edge_runtime.batch).

`edge-codec` sets ``OPENBLAS_NUM_THREADS=1`` before numpy loads (unless the user set it); a
library caller gets the same through threadpoolctl, scoped to each encode or decode.
"""
from __future__ import annotations

import contextlib
import os

_controller = None


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
