"""A pydicom decoding plugin for lossless JPEG 2000 and HTJ2K: OpenJPEG through imagecodecs, on several threads.

pydicom decodes JPEG 2000 through pylibjpeg-openjpeg, which runs OpenJPEG on one thread: 29 ms for
a 512x512 16-bit CT slice, a third of the time our encoder needs for it. imagecodecs wraps the same
library and lets it decode code-blocks on several threads (14 ms on 2 cores). A reversible JPEG 2000
code stream decodes to one set of integers whatever the library version or the number of threads, so
this plugin is used for the lossless transfer syntaxes only (JPEG 2000 Lossless Only, HTJ2K Lossless,
HTJ2K Lossless RPCL); irreversible streams keep pydicom's own decoders. pydicom does everything else
(the frames of the pixel data, sign correction, colour space), as for its own plugins: this one hands
it the samples in the layout pylibjpeg-openjpeg does (pixel-interleaved, one byte a sample up to 8 bits
of precision, two up to 16, little-endian) and sets the same decoding options.

`data.readers` registers it on first use when imagecodecs is installed; `set_threads` sets the threads
(a worker process that shares the CPUs with others uses one).
"""
from __future__ import annotations

import os

LABEL = "keras_codec-imagecodecs"
"""The plugin's name among pydicom's decoding plugins."""

# JPEG 2000 Lossless Only, HTJ2K Lossless, HTJ2K Lossless RPCL: the UIDs as strings, so that importing this module
# (a worker setting its threads) does not import pydicom (about 10 MiB in every worker of a plane pool)
DECODER_DEPENDENCIES = {syntax: ("imagecodecs",) for syntax in
                        ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202")}

_threads = 0


def set_threads(n: int) -> None:
    """Threads for each frame's decode; 0 (the default): every CPU this process may run on."""
    global _threads
    _threads = max(0, int(n))


def threads() -> int:
    if _threads:
        return _threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def is_available(syntax: str) -> bool:
    """pydicom's plugin test: a lossless JPEG 2000 syntax, and imagecodecs installed with its OpenJPEG."""
    if syntax not in DECODER_DEPENDENCIES:
        return False
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(getattr(imagecodecs, "JPEG2K", None) and imagecodecs.JPEG2K.available)


def decode_frame(src: bytes, runner) -> bytes:
    """One frame's samples, as pylibjpeg-openjpeg gives them to pydicom (module docstring)."""
    import imagecodecs
    import numpy as np

    arr = imagecodecs.jpeg2k_decode(src, numthreads=threads())
    if arr.dtype.itemsize > 4 or arr.dtype.kind not in "iu":
        raise ValueError(f"JPEG 2000 decoded to {arr.dtype} samples")
    from pydicom.pixels.common import PhotometricInterpretation as PI

    if runner.photometric_interpretation in (PI.YBR_ICT, PI.YBR_RCT):
        runner.set_option("photometric_interpretation", PI.RGB)  # the decoder undid the component transform
    precision = runner.get_option("j2k_precision", runner.bits_stored)
    for bits in (8, 16, 32):
        if 0 < precision <= bits:
            runner.set_option("bits_allocated", bits)
            break
    return np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).tobytes()
