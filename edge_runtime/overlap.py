"""The learned refinement of a lossy decode on a second core, while the entropy decoder goes on.

A lossy plane decodes coarse to fine: LL, then each level's three detail bands. The refined
inverse (edge_runtime.refine) adds to each level's details a prediction P(LL) of its low band,
a small integer network, and the low band of a level is complete as soon as the coarser levels
are decoded and synthesized. So the prediction of a level can run while that level's own bands
are being decoded: at the finest level of a 512x512 CT slice, about 11 ms of network beside about
20 ms of entropy decoding. Threads cannot share that work (the decoder's many small numpy calls
and the network's contend for Python's lock: both slow down), so a helper process computes the
predictions: the same function on the same integers, hence the same pixels.

When. A process starts its helper (one, a new interpreter: it never inherits the TFLite interpreters' threads)
once it has spent START_AFTER_S decoding planes large enough (4 x MIN_PIXELS), and uses it once the helper says
it is ready; decodes before that run in line. A one-shot `edge-codec decode` of an image never starts it; a
viewer or a service decoding image after image gets it within its first second of work. Worker processes
(batch mode, the plane pool) call `disable`: their cores are busy with other files or frames.
Only the predictions of low bands of at least MIN_PIXELS go to the helper (the others cost less than
the round trip). Where the helper's prediction fails (a corrupt stream's values), the decoder computes it
itself and raises the same error, at the same point, as without a helper; if the helper is gone, the
decode goes on in line and a later one starts a new helper.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from edge_runtime.threads import available_cpus

MIN_PIXELS = 1 << 14
"""The smallest low band (128x128) whose prediction goes to the helper."""
START_AFTER_S = 0.5
"""Seconds a process spends decoding large planes before it starts its helper: about 10 planes of 512x512. A process
that decodes an image or two never starts one (it would pay the helper's start, about 0.15 s of a core, for a few ms
a plane); one that decodes on and on (a viewer, a gateway, a series in process) has it from then on."""

_lock = threading.Lock()
_state = {"enabled": True, "seconds": 0.0, "helper": None}


def disable() -> None:
    """No helper in this process (a worker whose cores are busy with other work); stops one already started."""
    _state["enabled"] = False
    shutdown()


def enable() -> None:
    """Undo `disable` (tests)."""
    _state["enabled"] = True


def shutdown() -> None:
    """Stop the helper if one runs (also at exit)."""
    with _lock:
        helper, _state["helper"] = _state["helper"], None
    if helper is not None:
        helper.close()


atexit.register(shutdown)


def predictor(refinement, pixels: int) -> "_Session":
    """For one decode of a plane of `pixels` (padded) pixels: a context manager whose value maps (x, level) to a
    handle whose `result()` is refinement.predict(x, level), through the helper when this process has a ready one
    for `refinement` that no other decode holds, else in line. Adds the decode's time to the process's time spent
    on large planes (the helper starts after START_AFTER_S of it)."""
    helper = None
    if _state["enabled"] and pixels >= 4 * MIN_PIXELS and available_cpus() >= 2 and os.name == "posix":
        with _lock:
            helper = _state["helper"]
            if helper is not None and (helper.broken or helper.refinement is not refinement) and not helper.busy:
                helper.close()
                helper = _state["helper"] = None
            if helper is None and _state["seconds"] >= START_AFTER_S and sys.executable:
                _state["helper"] = _Helper(refinement)  # ready for a later decode
            if helper is not None and (helper.busy or helper.refinement is not refinement or not helper.ready()):
                helper = None
            if helper is not None:
                helper.busy = True  # one decode at a time: requests and replies alternate on one socket
        return _Session(refinement, helper, timed=True)
    return _Session(refinement, None, timed=False)


class _Session:
    def __init__(self, refinement, helper, timed: bool):
        self.refinement, self.helper, self.pending = refinement, helper, None
        self.started = time.perf_counter() if timed else None

    def __enter__(self):
        return self

    def __call__(self, x: np.ndarray, level: int):
        if self.helper is not None and x.size >= MIN_PIXELS and not self.helper.broken:
            if self.pending is not None:
                self.pending.discard()  # (the decoder takes each prediction before asking the next)
            self.pending = self.helper.submit(x, level)
            return self.pending
        return _InLine(self.refinement, x, level)

    def __exit__(self, *exc) -> None:
        if self.helper is not None:
            if self.pending is not None:  # a decode that failed mid-way: the reply still comes, read it
                self.pending.discard()
            self.helper.busy = False
        if self.started is not None:
            with _lock:
                _state["seconds"] += time.perf_counter() - self.started


class _InLine:
    def __init__(self, refinement, x, level):
        self.refinement, self.x, self.level = refinement, x, level

    def result(self) -> tuple:
        return self.refinement.predict(self.x, self.level)

    def discard(self) -> None:
        """Nothing to read (_Pending.discard)."""


class _Helper:
    """One helper process computing refinement.predict for its parent; one request at a time.

    A plain child interpreter (`python -c`, this package on its path, one BLAS thread) on one end of a socket pair,
    not a multiprocessing child: spawning one would run the caller's main module again, which a library must not."""

    def __init__(self, refinement):
        self.refinement = refinement
        self.broken = False
        self.busy = False
        self._ready = False
        ours, theirs = socket.socketpair()
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        code = "import sys; from edge_runtime.overlap import _serve; _serve(int(sys.argv[1]))"
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno())], env=env,
                                          pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        try:
            self._conn.send(refinement)
        except OSError:
            self.broken = True

    def ready(self) -> bool:
        if not self._ready and not self.broken:
            try:
                if self._conn.poll():
                    self._ready = self._conn.recv() == "ready"
                    self.broken = not self._ready
            except (EOFError, OSError):
                self.broken = True
        return self._ready and not self.broken

    def submit(self, x: np.ndarray, level: int):
        x = np.ascontiguousarray(x, np.float64)
        try:
            self._conn.send((int(level), x.shape))
            self._conn.send_bytes(x)
        except (OSError, ValueError):
            self.broken = True
            return _InLine(self.refinement, x, level)
        return _Pending(self, x, level)

    def close(self) -> None:
        if not self.ready():  # still starting (or failed): nothing to finish, do not wait for its imports
            self._proc.kill()
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        try:
            self._proc.wait(2)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(2)
        self._conn.close()


class _Pending:
    def __init__(self, helper: _Helper, x: np.ndarray, level: int):
        self.helper, self.x, self.level = helper, x, level
        self._out = self._received = None

    def result(self) -> tuple:
        if self._out is None:
            reply = self._receive()
            self._out = reply if reply is not None else self.helper.refinement.predict(self.x, self.level)
        return self._out

    def discard(self) -> None:
        """Read the reply, if not yet read, and drop it (a decode that failed before it needed it)."""
        if self._out is None and not self._received:
            self._receive()

    def _receive(self) -> tuple | None:
        """The helper's predictions, or None: it failed on these values (a corrupt stream's: the caller computes
        them itself and raises the same error as without a helper) or is gone (then broken)."""
        self._received = True
        h = self.helper
        if h.broken:
            return None
        out = np.empty((3,) + self.x.shape, np.float64)
        try:
            reply = h._conn.recv()
            if reply == "ok" and h._conn.recv_bytes_into(_bytes(out)) == out.nbytes:
                return tuple(out)
            if reply == "error":
                return None
        except (EOFError, OSError, ValueError):
            pass
        h.broken = True
        return None


def _bytes(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array's bytes, as one flat view (Connection.recv_bytes_into counts a buffer's first axis)."""
    return a.reshape(-1).view(np.uint8)


def _serve(fd: int) -> None:
    """The helper's loop on the socket `fd`: the refinement first, then requests: (level, shape) and the low band's
    bytes in, "ok" and the 3 predictions' bytes out; None or the parent's end closed: exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's (it reaches the whole process group)
    conn = Connection(fd)
    try:
        refinement = conn.recv()
    except (EOFError, OSError):
        return
    conn.send("ready")
    while True:
        try:
            msg = conn.recv()
            if msg is None:
                return
            level, shape = msg
            x = np.empty(shape, np.float64)
            conn.recv_bytes_into(_bytes(x))
        except (EOFError, OSError):
            return
        try:
            pred = np.stack(refinement.predict(x, level))
        except Exception:  # noqa: BLE001 - the parent recomputes in line and raises the error itself
            conn.send("error")
            continue
        conn.send("ok")
        conn.send_bytes(pred)
