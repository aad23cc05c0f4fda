"""A second core for a decode or a lossless encode: work that needs only what is known early, in a helper process.

Decode. A lossy plane decodes coarse to fine: LL, then each level's three detail bands. The refined
inverse (edge_runtime.refine) adds to each level's details a prediction P(LL) of its low band,
a small integer network, and the low band of a level is complete as soon as the coarser levels
are decoded and synthesized. So the prediction of a level can run while that level's own bands
are being decoded: at the finest level of a 512x512 CT slice, about 9-12 ms of network beside about
16 ms of entropy decoding (`predictor`). Only the predictions of low bands of at least MIN_PIXELS
go to the helper (the others cost less than the round trip).

Lossless encode. A tile without a base (edge_runtime.direct) is coded pass by pass, and each pass first
chooses its prediction mode and weights on a sample of its values, about half of the encode. Losslessly
those choices depend only on the tile itself, not on the coding: the helper makes them, pass after pass
(direct.lossless_choices), while the encoder codes the passes already chosen (`lossless_choices`), for
tiles of CHOICE_PIXELS.

Threads cannot share such work (many small numpy calls on both sides contend for Python's lock: both slow
down), hence a process. It runs the same functions on the same integers: the same pixels and the same
streams, with or without it. Where the helper fails on a corrupt stream's values, the caller computes the
prediction itself and raises the same error, at the same point, as without a helper; if the helper is gone,
the work goes on in line and a later call starts a new helper.

When. A process starts its helper (one, a new interpreter: it never inherits the TFLite interpreters'
threads) once it has spent START_AFTER_S decoding large planes or encoding large tiles losslessly, and uses it
once the helper says it is ready; work before that runs in line. A one-shot `edge-codec decode` or `encode`
of an image never starts it; a viewer, a gateway or an archive service coding image after image gets it
within its first second of work. Worker processes (batch mode, the plane pool) call `disable`: their cores
are busy with other files or frames. One decode or encode at a time uses the helper (others run in line).
"""
from __future__ import annotations

import atexit
import mmap
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

from edge_runtime.threads import available_cpus, keep_freed_memory

MIN_PIXELS = 1 << 12
"""The smallest low band (64x64) whose prediction goes to the helper: through the shared buffer the round trip costs
the caller about 0.1 ms, the 64x64 band's prediction in line 0.6 ms (smaller ones 0.1-0.2 ms: in line)."""
LARGE_PIXELS = 1 << 16
"""Planes (padded) of at least this many pixels (256x256) count as large: they use the helper, and their time
counts towards starting it."""
CHOICE_PIXELS = (1 << 17, 1 << 20)
"""The smallest and largest tiles (about 362x362, 1024x1024) whose lossless pass choices the helper makes: larger
ones would double the memory of an encode that is already the largest (a 1760x1760 CR peaks near 800 MiB)."""
START_AFTER_S = 0.5
"""Seconds a process spends on large planes or tiles before it starts its helper: about 10 decodes or 3 lossless
encodes of a 512x512 slice. A process that codes an image or two never starts one (it would pay the helper's start,
about 0.15 s of a core, for a few ms an image); one that codes on and on has it from then on."""

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


def helper_usage() -> dict | None:
    """The running helper's CPU seconds so far and peak resident memory (MiB), from /proc (Linux); None when this
    process has no helper or the figures cannot be read. What a measurement of this process adds for its helper
    (keras_codec.evaluation.speed): the helper is a process of its own, outside the caller's CPU time and peak."""
    helper = _state["helper"]
    if helper is None:
        return None
    pid = helper._proc.pid
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        with open(f"/proc/{pid}/status") as fh:
            peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return {"pid": pid, "cpu_s": (int(fields[11]) + int(fields[12])) / ticks, "peak_rss_mib": peak / 1024.0}


def _forget_after_fork() -> None:
    """In a forked child: the parent's helper is the parent's (one socket, one caller): close this copy of its
    socket and shared buffer, without a word to the helper, and start afresh."""
    global _lock
    _lock = threading.Lock()
    helper, _state["helper"], _state["seconds"] = _state["helper"], None, 0.0
    if helper is not None:
        try:
            helper._conn.close()
        except OSError:
            pass
        if helper._shared is not None:  # nor write into its shared buffer
            helper._shared.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _acquire(large: bool):
    """(the process's helper, ready and now held by the caller, or None; whether the caller's time counts)."""
    if not (large and _state["enabled"] and available_cpus() >= 2 and os.name == "posix"):
        return None, False
    with _lock:
        helper = _state["helper"]
        if helper is not None and helper.broken and not helper.busy:
            helper.close()
            helper = _state["helper"] = None
        if helper is None and _state["seconds"] >= START_AFTER_S and sys.executable:
            _state["helper"] = _Helper()  # ready for a later call
        if helper is not None and (helper.busy or not helper.ready()):
            helper = None
        if helper is not None:
            helper.busy = True  # one caller at a time: requests and replies alternate on one socket
    return helper, True


class _Session:
    """The helper held for one decode or encode (or none); the time of a large one counted on exit."""

    def __init__(self, helper, timed: bool):
        self.helper = helper
        self.started = time.perf_counter() if timed else None
        self.unread = None  # a reply the caller may not have read (a decode or encode failing half-way)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.helper is not None:
            if self.unread is not None:
                self.unread.discard()
            self.helper.busy = False
        if self.started is not None:
            with _lock:
                _state["seconds"] += time.perf_counter() - self.started


def predictor(refinement, pixels: int) -> "_Predictor":
    """For one decode of a plane of `pixels` (padded) pixels: a context manager whose value maps (x, level) to a
    handle whose `result()` is refinement.predict(x, level), computed by the helper when the process has one ready
    and free, else in line."""
    helper, timed = _acquire(pixels >= LARGE_PIXELS)
    return _Predictor(refinement, helper, timed)


class _Predictor(_Session):
    def __init__(self, refinement, helper, timed: bool):
        super().__init__(helper, timed)
        self.refinement = refinement

    def __call__(self, x: np.ndarray, level: int):
        if self.helper is not None and x.size >= MIN_PIXELS and not self.helper.broken:
            if self.unread is not None:
                self.unread.discard()  # (the decoder takes each prediction before asking the next)
            self.unread = self.helper.predict(self.refinement, x, level)
            return self.unread
        return _InLine(self.refinement, x, level)


def lossless_choices(u: np.ndarray, top: int, version: int) -> "_Choices":
    """For one lossless encode of tile u (edge_runtime.direct.encode): a context manager whose value is an iterator
    of direct.lossless_choices(u, top, version) made by the helper while the encoder codes, or None (the encoder
    then chooses in line)."""
    helper, timed = _acquire(CHOICE_PIXELS[0] <= np.size(u) <= CHOICE_PIXELS[1])
    return _Choices(helper, timed, u, top, version)


class _Choices(_Session):
    def __init__(self, helper, timed: bool, u, top: int, version: int):
        super().__init__(helper, timed)
        if helper is not None:
            self.unread = helper.choices(u, top, version)

    def __enter__(self):
        return self.unread


class _InLine:
    def __init__(self, refinement, x, level):
        self.refinement, self.x, self.level = refinement, x, level

    def result(self) -> tuple:
        return self.refinement.predict(self.x, self.level)

    def discard(self) -> None:
        """Nothing to read (_Pending.discard)."""


class _Helper:
    """One helper process serving its parent; one request at a time.

    A plain child interpreter (`python -c`, this package on its path, one BLAS thread) on one end of a socket pair,
    not a multiprocessing child: spawning one would run the caller's main module again, which a library must not."""

    def __init__(self):
        self.refinement = None  # the one the helper holds
        self.broken = False
        self.busy = False
        self._ready = False
        ours, theirs = socket.socketpair()
        self._shared = _SharedBuffer.create()  # the low bands and predictions go through it (None: the socket)
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        code = "import sys; from edge_runtime.overlap import _serve; _serve(int(sys.argv[1]), int(sys.argv[2]))"
        shared_fd = self._shared.fd if self._shared is not None else -1
        fds = (theirs.fileno(),) + ((shared_fd,) if shared_fd >= 0 else ())
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno()), str(shared_fd)], env=env,
                                          pass_fds=fds, stdin=subprocess.DEVNULL)
        except BaseException:
            if self._shared is not None:
                self._shared.close()
            raise
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())

    def ready(self) -> bool:
        if not self._ready and not self.broken:
            try:
                if self._conn.poll():
                    self._ready = self._conn.recv() == "ready"
                    self.broken = not self._ready
            except (EOFError, OSError):
                self.broken = True
        return self._ready and not self.broken

    def _send(self, message, data: np.ndarray) -> bool:
        try:
            self._conn.send(message)
            self._conn.send_bytes(data)
            return True
        except (OSError, ValueError):
            self.broken = True
            return False

    def predict(self, refinement, x: np.ndarray, level: int):
        x = np.ascontiguousarray(x, np.float64)
        if self.refinement is not refinement:
            try:
                self._conn.send(("refinement", refinement))
                self.refinement = refinement
            except (OSError, ValueError):
                self.broken = True
        if not self.broken and self._shared is not None:  # the band into the shared buffer, the request alone
            try:
                self._shared.put(x, 4 * x.nbytes)  # room for the band and its 3 predictions after it
                self._conn.send(("predict", int(level), x.shape, self._shared.size))
            except (OSError, ValueError):
                self.broken = True
        elif not self.broken:
            self._send(("predict", int(level), x.shape), x)
        return _InLine(refinement, x, level) if self.broken else _Pending(self, refinement, x, level)

    def choices(self, u: np.ndarray, top: int, version: int):
        u = np.ascontiguousarray(u, np.int64)
        if not self._send(("choices", u.shape, int(top), int(version)), u):
            return None
        return _ChoiceStream(self, u, top, version)

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
        if self._shared is not None:
            self._shared.close()


class _Pending:
    def __init__(self, helper: _Helper, refinement, x: np.ndarray, level: int):
        self.helper, self.refinement, self.x, self.level = helper, refinement, x, level
        self._out = self._received = None

    def result(self) -> tuple:
        if self._out is None:
            reply = self._receive()
            self._out = reply if reply is not None else self.refinement.predict(self.x, self.level)
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
            if reply == "ok" and h._shared is not None:
                out[...] = h._shared.view(out.shape, self.x.nbytes)  # copied out: the next request overwrites it
                return tuple(out)
            if reply == "ok" and h._conn.recv_bytes_into(_bytes(out)) == out.nbytes:
                return tuple(out)
            if reply == "error":
                return None
        except (EOFError, OSError, ValueError):
            pass
        h.broken = True
        return None


class _ChoiceStream:
    """The helper's lossless pass choices as they come; in line from where the helper fails, if it does."""

    def __init__(self, helper: _Helper, u: np.ndarray, top: int, version: int):
        self.helper, self.u, self.top, self.version = helper, u, top, version
        self.taken = 0
        self.done = False
        self._inline = None

    def __iter__(self):
        return self

    def __next__(self):
        if self._inline is None and not self.done:
            try:
                reply = self.helper._conn.recv()
            except (EOFError, OSError):
                reply = None
                self.helper.broken = True
            if isinstance(reply, tuple):
                self.taken += 1
                return reply
            self.done = reply == "end"
            if not self.done:  # the helper is gone or failed: the rest in line, from the same generator
                from edge_runtime import direct

                self._inline = direct.lossless_choices(self.u, self.top, self.version)
                for _ in range(self.taken):
                    next(self._inline)
        if self._inline is None:
            raise StopIteration
        return next(self._inline)

    def discard(self) -> None:
        """Read what the helper still sends, up to its end (an encode that failed half-way)."""
        while self._inline is None and not self.done and not self.helper.broken:
            try:
                reply = self.helper._conn.recv()
            except (EOFError, OSError):
                self.helper.broken = True
                return
            self.done = not isinstance(reply, tuple)
            self.helper.broken = self.done and reply != "end"


class _SharedBuffer:
    """Memory shared by a process and its helper (an anonymous memfd, Linux): the low bands go in and their
    predictions come back through it, one copy each way, instead of through the socket (several copies and
    wake-ups for the 1.5 MB of a 256x256 band's predictions). The parent grows it (the file, then its own map) before
    a request that needs more; the helper maps it again at the size a request names."""

    def __init__(self, fd: int):
        self.fd = fd
        self.size = 0
        self._map = None

    @classmethod
    def create(cls) -> "_SharedBuffer | None":
        """A new buffer, or None where there is no memfd (not Linux, or a kernel without it): then the socket."""
        try:
            return cls(os.memfd_create("edge-codec-helper", getattr(os, "MFD_CLOEXEC", 0)))
        except (AttributeError, OSError):
            return None

    def attach(self, size: int) -> None:
        """Map the first `size` bytes (again, if the map is smaller)."""
        if size > self.size:
            self._map = mmap.mmap(self.fd, size)  # the old map is unmapped once no array views it
            self.size = size

    def put(self, x: np.ndarray, need: int) -> None:
        """Copy `x` to the start of the buffer, first growing it to at least `need` bytes."""
        if need > self.size:
            size = max(need, 2 * self.size, 1 << 20)
            size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
            os.ftruncate(self.fd, size)
            self.attach(size)
        self.view(x.shape, 0)[...] = x

    def view(self, shape: tuple, offset: int) -> np.ndarray:
        """A float64 array of `shape` on the buffer at byte `offset` (valid until the next request)."""
        count = int(np.prod(shape, dtype=np.int64))
        if offset + 8 * count > self.size:
            raise ValueError("a request beyond the shared buffer")
        return np.frombuffer(self._map, np.float64, count, offset).reshape(shape)

    def close(self) -> None:
        self._map = None
        try:
            os.close(self.fd)
        except OSError:
            pass


def _bytes(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array's bytes, as one flat view (Connection.recv_bytes_into counts a buffer's first axis)."""
    return a.reshape(-1).view(np.uint8)


def _serve(fd: int, shared_fd: int = -1) -> None:
    """The helper's loop on the socket `fd`: requests ("refinement", obj); ("predict", level, shape, size), the low
    band in the shared buffer `shared_fd` (then `size` bytes long), its 3 predictions written after it ("ok", or
    "error"); ("predict", level, shape) then the low band's bytes ("ok" and the predictions' bytes out, or "error"),
    where the parent has no shared buffer; ("choices", shape, top, version) then the tile's bytes (each pass's
    choice out, then "end", or "error"); None or the parent's end closed: exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's (it reaches the whole process group)
    keep_freed_memory()  # as its parent: without it every large array is new memory, page-faulted in anew
    conn = Connection(fd)
    shared = _SharedBuffer(shared_fd) if shared_fd >= 0 else None
    conn.send("ready")
    refinement = None
    while True:
        try:
            msg = conn.recv()
            if msg is None:
                return
            if msg[0] == "refinement":
                refinement = msg[1]
                continue
            in_shared = msg[0] == "predict" and len(msg) == 4  # the band in the shared buffer, its predictions too
            if in_shared:
                shared.attach(msg[3])
                data = shared.view(msg[2], 0)
            else:
                shape, dtype = (msg[2], np.float64) if msg[0] == "predict" else (msg[1], np.int64)  # band or tile
                data = np.empty(shape, dtype)
                conn.recv_bytes_into(_bytes(data))
        except (EOFError, OSError, ValueError):
            return
        if msg[0] == "predict":
            try:
                pred = refinement.predict_stacked(data, msg[1])
            except Exception:  # noqa: BLE001 - the parent recomputes in line and raises the error itself
                conn.send("error")
                continue
            if in_shared:
                shared.view(pred.shape, data.nbytes)[...] = pred
            conn.send("ok")
            if not in_shared:
                conn.send_bytes(pred)
        else:
            from edge_runtime import direct

            try:
                for choice in direct.lossless_choices(data, msg[2], msg[3]):
                    conn.send(choice)
            except (OSError, EOFError):
                return
            except Exception:  # noqa: BLE001 - the parent chooses the rest in line
                conn.send("error")
                continue
            conn.send("end")
