"""Classical baseline codecs (JPEG 2000, JPEG XL, JPEG-LS) through imagecodecs.

The evaluation layer above :mod:`~keras_codec.evaluation.metrics` and below the engine
(:mod:`~keras_codec.evaluation.engine`) and the speed benchmark.

One small interface, :class:`ClassicalCodec`, with a subclass per codec; every
measurement returns the same row::

    {codec, param, n_bytes, bpp, psnr, psnr_bitdepth, ssim, max_abs_err,
     encode_s, decode_s[, ms_ssim]}

``n_bytes`` is the length of the real codestreams, headers included; metrics
follow :mod:`keras_codec.evaluation.metrics`. ``param`` is the codec's quality knob
(None = lossless):

- JPEG 2000 (OpenJPEG, raw J2K codestream): ``param`` is OpenJPEG's fixed-
  quality target, a PSNR in dB relative to 2**precision - 1, coded with the
  irreversible 9/7 wavelet; lossless uses the reversible 5/3 wavelet.
- JPEG XL (libjxl, effort 7): ``param`` is the Butteraugli distance.
- JPEG-LS (CharLS): ``param`` is NEAR, the maximum absolute error.
- HEVC (x265 through ffmpeg, :class:`HEVC`): a video codec, so it codes a
  whole (frames, rows, cols, samples) sequence at once; ``param`` is x265's
  constant QP. It is the reference for cine loops (DICOM carries HEVC as a
  video transfer syntax) and needs the ``ffmpeg`` program with libx265.

Pixel conventions, applied identically when encoding and decoding:

- planes are 2-D uint8, uint16 or int16 arrays; a signed plane is shifted to
  unsigned by adding 2**(bits_stored - 1) before coding and shifted back after
  (bits_stored defaults to the dtype's width, so int16 is offset by 32768);
- the precision declared to the codec is ``bits_stored`` when given, otherwise
  the fewest bits that hold the plane's (shifted) values; this only changes
  efficiency, never the decoded values;
- (rows, cols, samples) and (frames, rows, cols, samples) images are coded one
  2-D plane at a time and their byte counts summed.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import imagecodecs
import numpy as np

from keras_codec.evaluation import metrics

__all__ = [
    "ClassicalCodec",
    "HEVC",
    "JPEG2000",
    "JPEGLS",
    "JPEGXL",
    "PSNRSearch",
    "UnreachableTargetError",
    "at_psnr",
    "lossless_bpp",
    "measure",
    "psnr_sweep",
    "rd_curve",
]

DEFAULT_PSNR_TARGETS = (40.0, 42.5, 45.0, 47.5, 50.0, 52.5, 55.0)
DEFAULT_NEAR_VALUES = (0, 1, 2, 4, 8, 16, 32)


def _bits_stored(dtype, bits_stored):
    width = np.dtype(dtype).itemsize * 8
    if bits_stored is None:
        return width
    bits = int(bits_stored)
    if not 1 <= bits <= width:
        raise ValueError(f"bits_stored must be between 1 and {width} for {np.dtype(dtype)}, got {bits_stored}")
    return bits


class ClassicalCodec:
    """A classical image codec coding one 2-D integer plane to bytes and back.

    Subclasses implement ``_encode(plane, param, precision)`` on an unsigned
    plane and ``_decode(data)``; this class handles signed input and checks.
    ``param_worst``/``param_best`` bound the quality search of :func:`at_psnr`
    (``log_param`` searches on a log scale, ``integer_param`` on integers).
    """

    name = "classical"
    lossless = True
    param_worst: float = 0.0
    param_best: float = 1.0
    log_param = False
    integer_param = False
    sweep_params = False  # rd_curve: list explicit params instead of PSNR targets

    def encode(self, plane, param=None, bits_stored=None):
        """Code a 2-D integer plane; ``param=None`` codes it losslessly."""
        plane = np.asarray(plane)
        if plane.ndim != 2:
            raise ValueError(f"{self.name} codes 2-D planes, got shape {plane.shape}")
        if plane.dtype not in (np.uint8, np.uint16, np.int16):
            raise ValueError(f"{self.name} codes uint8, uint16 or int16 planes, got {plane.dtype}")
        bits = _bits_stored(plane.dtype, bits_stored)
        values = plane.astype(np.int64)
        if plane.dtype.kind == "i":
            values += 1 << (bits - 1)
        if values.size and (values.min() < 0 or values.max() >= 1 << bits):
            raise ValueError(
                f"pixel values {plane.min()}..{plane.max()} do not fit bits_stored={bits}; "
                "pass the image's BitsStored or leave it unset"
            )
        unsigned = values.astype(np.uint8 if plane.dtype == np.uint8 else np.uint16)
        if bits_stored is None:
            precision = max(int(unsigned.max()).bit_length(), 1) if unsigned.size else 1
        else:
            precision = bits
        if param is None and not self.lossless:
            raise ValueError(f"{self.name} has no lossless mode; pass a quality parameter")
        return bytes(self._encode(np.ascontiguousarray(unsigned), param, precision))

    def decode(self, data, dtype=np.uint16, bits_stored=None):
        """Decode bytes from :meth:`encode` back to a plane of ``dtype`` (the original's dtype and bits_stored)."""
        dtype = np.dtype(dtype)
        bits = _bits_stored(dtype, bits_stored)
        plane = np.asarray(self._decode(data)).astype(np.int64)
        if plane.ndim != 2:
            raise ValueError(f"{self.name} decoded a {plane.ndim}-D array; expected one 2-D plane")
        if dtype.kind == "i":
            plane -= 1 << (bits - 1)
        info = np.iinfo(dtype)
        return np.clip(plane, info.min, info.max).astype(dtype)

    def _encode(self, plane, param, precision):
        raise NotImplementedError

    def _decode(self, data):
        raise NotImplementedError

    def param_at(self, u):
        """The parameter at position u in [0, 1] of the search range (0 = worst quality)."""
        lo, hi = self.param_worst, self.param_best
        if self.log_param:
            p = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        else:
            p = lo + u * (hi - lo)
        return int(round(p)) if self.integer_param else float(p)

    def __repr__(self):
        return f"{type(self).__name__}()"


class JPEG2000(ClassicalCodec):
    """JPEG 2000 (OpenJPEG) raw J2K codestream; lossy by a fixed-quality PSNR target in dB."""

    name = "jpeg2000"
    param_worst = 1.0
    param_best = 160.0

    def __init__(self, resolutions=6):
        self.resolutions = resolutions

    def _encode(self, plane, param, precision):
        if param is None:
            return imagecodecs.jpeg2k_encode(
                plane, codecformat="J2K", reversible=True, bitspersample=precision, resolutions=self.resolutions
            )
        level = float(param)
        if not 1.0 <= level <= 1000.0:
            raise ValueError(f"JPEG 2000 quality must be a PSNR target in 1..1000 dB, got {param}")
        return imagecodecs.jpeg2k_encode(
            plane,
            level,
            codecformat="J2K",
            reversible=False,
            bitspersample=precision,
            resolutions=self.resolutions,
        )

    def _decode(self, data):
        return imagecodecs.jpeg2k_decode(data)


class JPEGXL(ClassicalCodec):
    """JPEG XL (libjxl); lossy by Butteraugli distance (searched on a log scale), or lossless."""

    name = "jpegxl"
    param_worst = 25.0
    param_best = 0.01  # libjxl's smallest lossy distance
    log_param = True

    def __init__(self, effort=7):
        self.effort = effort

    def _encode(self, plane, param, precision):
        if plane.dtype == np.uint16:
            precision = min(max(precision, 9), 16)  # imagecodecs takes 9..16 bits for uint16
        if param is None:
            return imagecodecs.jpegxl_encode(plane, lossless=True, effort=self.effort, bitspersample=precision)
        return imagecodecs.jpegxl_encode(
            plane, distance=float(param), lossless=False, effort=self.effort, bitspersample=precision
        )

    def _decode(self, data):
        return imagecodecs.jpegxl_decode(data)


class JPEGLS(ClassicalCodec):
    """JPEG-LS (CharLS); near-lossless with NEAR = max absolute error (0 = lossless).

    imagecodecs declares the dtype's full width (8 or 16 bits) to CharLS, so
    the precision argument is unused here.
    """

    name = "jpegls"
    param_worst = 255  # CharLS bounds NEAR by min(255, MAXVAL / 2)
    param_best = 0
    integer_param = True
    sweep_params = True

    def _encode(self, plane, param, precision):
        near = 0 if param is None else int(param)
        if near < 0:
            raise ValueError(f"JPEG-LS NEAR must be >= 0, got {param}")
        near = min(near, 255, (1 << (plane.dtype.itemsize * 8)) // 2 - 1)
        return imagecodecs.jpegls_encode(plane, level=near)

    def _decode(self, data):
        return imagecodecs.jpegls_decode(data)


def _geometry(image):
    image = np.asarray(image)
    if image.ndim == 2:
        return image[None, :, :, None]
    if image.ndim == 3:
        return image[None]
    if image.ndim == 4:
        return image
    raise ValueError(f"expected (rows, cols), (rows, cols, samples) or (frames, rows, cols, samples), got {image.shape}")


def _roundtrip(codec, image, param, bits_stored):
    """Code every plane; return (decoded image, n_bytes, encode seconds, decode seconds)."""
    image = np.asarray(image)
    stack = _geometry(image)
    frames, _, _, samples = stack.shape
    t0 = time.perf_counter()
    streams = [
        codec.encode(np.ascontiguousarray(stack[f, :, :, s]), param, bits_stored)
        for f in range(frames)
        for s in range(samples)
    ]
    t1 = time.perf_counter()
    decoded = np.empty_like(stack)
    for i, data in enumerate(streams):
        decoded[i // samples, :, :, i % samples] = codec.decode(data, image.dtype, bits_stored)
    t2 = time.perf_counter()
    return decoded.reshape(image.shape), sum(len(s) for s in streams), t1 - t0, t2 - t1


def measure(codec, image, param=None, bits_stored=None, with_ms_ssim=False, repeats=1):
    """Code an image with one parameter and return its row.

    With ``repeats`` > 1 the times are the median of that many runs after one
    warm-up run (DESIGN.md's timing rule asks for at least 5).
    """
    image = np.asarray(image)
    bits = _bits_stored(image.dtype, bits_stored)
    if repeats > 1:
        _roundtrip(codec, image, param, bits_stored)
    runs = [_roundtrip(codec, image, param, bits_stored) for _ in range(max(int(repeats), 1))]
    decoded, n_bytes = runs[0][0], runs[0][1]
    row = {
        "codec": codec.name,
        "param": param,
        "n_bytes": int(n_bytes),
        "bpp": metrics.bpp(n_bytes, image.size),
        "psnr": metrics.psnr(image, decoded),
        "psnr_bitdepth": metrics.psnr_bitdepth(image, decoded, bits),
        "ssim": metrics.ssim(image, decoded),
        "max_abs_err": metrics.max_abs_error(image, decoded),
        "encode_s": float(np.median([r[2] for r in runs])),
        "decode_s": float(np.median([r[3] for r in runs])),
    }
    if with_ms_ssim:
        row["ms_ssim"] = metrics.ms_ssim(image, decoded)
    return row


class UnreachableTargetError(ValueError):
    """A PSNR target above what the codec's best lossy setting reaches on this image."""


class PSNRSearch:
    """The quality settings of one codec tried on one image, shared by successive PSNR targets.

    Every trial codes the image once and keeps a cheap row (``codec, param,
    n_bytes, bpp, psnr, psnr_bitdepth, max_abs_err, encode_s, decode_s``, plus
    ``ssim`` when ``with_ssim``); a later target starts from the bracket the
    earlier trials already give, so a whole RD curve costs a few trials per
    point. Every trial is itself a valid rate-distortion point (:attr:`rows`).
    """

    def __init__(self, codec, image, bits_stored=None, with_ssim=False):
        self.codec = codec
        self.image = np.asarray(image)
        self.bits_stored = bits_stored
        self.with_ssim = with_ssim
        self._bits = _bits_stored(self.image.dtype, bits_stored)
        self._rows = {}  # param -> row
        self._psnr_at = {}  # search position u -> PSNR reached there

    @property
    def rows(self):
        """Rows of every setting tried so far, fewest bytes first."""
        return sorted(self._rows.values(), key=lambda r: (r["n_bytes"], -r["psnr"]))

    def trial(self, u):
        """Row of the setting at search position u in [0, 1] (0 = worst quality), coded once."""
        p = self.codec.param_at(u)
        if p not in self._rows:
            decoded, n_bytes, t_enc, t_dec = _roundtrip(self.codec, self.image, p, self.bits_stored)
            row = {
                "codec": self.codec.name,
                "param": p,
                "n_bytes": int(n_bytes),
                "bpp": metrics.bpp(n_bytes, self.image.size),
                "psnr": metrics.psnr(self.image, decoded),
                "psnr_bitdepth": metrics.psnr_bitdepth(self.image, decoded, self._bits),
                "max_abs_err": metrics.max_abs_error(self.image, decoded),
                "encode_s": t_enc,
                "decode_s": t_dec,
            }
            if self.with_ssim:
                row["ssim"] = metrics.ssim(self.image, decoded)
            self._rows[p] = row
        self._psnr_at[u] = self._rows[p]["psnr"]
        return self._rows[p]

    def _narrow(self, lo, hi):
        if self.codec.integer_param:
            return abs(self.codec.param_at(hi) - self.codec.param_at(lo)) <= 1
        return hi - lo < 1e-4

    def seek(self, target_psnr, tol=0.05, max_iter=40, interpolate=True):
        """Row of the smallest file tried whose dynamic-range PSNR is >= ``target_psnr``.

        Narrows the bracket [worst setting missing the target, best setting
        meeting it] until a setting lands in [target, target + tol] dB, the
        bracket is narrower than 1e-4 of the range (adjacent integers for
        NEAR), or after ``max_iter`` steps. With ``interpolate`` the next
        position is interpolated linearly in PSNR (aiming at target + tol/2),
        falling back to bisection whenever that fails to halve the bracket;
        otherwise it bisects. Raises ValueError when even the best quality
        setting misses the target (:class:`UnreachableTargetError`).
        """
        best = self.trial(1.0)
        if not best["psnr"] >= target_psnr:
            raise UnreachableTargetError(
                f"{self.codec.name} reaches only {best['psnr']:.2f} dB at its best lossy setting "
                f"({best['param']}), below the {target_psnr} dB target; use lossless coding"
            )
        if not self.trial(0.0)["psnr"] >= target_psnr:
            below = [u for u, v in self._psnr_at.items() if v < target_psnr]
            lo = max(below)
            hi = min(u for u, v in self._psnr_at.items() if v >= target_psnr and u > lo)
            bisect = not interpolate
            for _ in range(max_iter):
                if self._narrow(lo, hi):
                    break
                width = hi - lo
                p_lo, p_hi = self._psnr_at[lo], self._psnr_at[hi]
                if bisect or not math.isfinite(p_hi) or not p_hi > p_lo:
                    u, stepped = 0.5 * (lo + hi), "bisect"
                else:
                    u = lo + (target_psnr + 0.5 * tol - p_lo) / (p_hi - p_lo) * width
                    u, stepped = min(max(u, lo + 0.02 * width), hi - 0.02 * width), "interpolate"
                value = self.trial(u)["psnr"]
                if value >= target_psnr:
                    hi = u
                    if value <= target_psnr + tol:
                        break
                else:
                    lo = u
                # an interpolation step that did not halve the bracket is followed by a bisection
                bisect = not interpolate or (stepped == "interpolate" and hi - lo > 0.5 * width)
        feasible = [r for r in self._rows.values() if r["psnr"] >= target_psnr]
        return min(feasible, key=lambda r: r["n_bytes"])


def at_psnr(codec, image, target_psnr, tol=0.05, bits_stored=None, with_ms_ssim=False, max_iter=40, search=None):
    """Row of the smallest file whose dynamic-range PSNR is >= ``target_psnr``.

    Searches the codec's quality parameter (JPEG 2000's PSNR target, JPEG XL's
    log distance, JPEG-LS's NEAR) with :meth:`PSNRSearch.seek`, keeping the
    worst-quality setting that still meets the target, then measures it fully
    (:func:`measure`). Pass a ``search`` (a :class:`PSNRSearch` of this codec
    and image) to reuse the settings earlier targets tried. Raises ValueError
    when even the best quality setting misses the target.
    """
    search = search if search is not None else PSNRSearch(codec, image, bits_stored)
    row = search.seek(target_psnr, tol=tol, max_iter=max_iter)
    return measure(codec, image, row["param"], bits_stored, with_ms_ssim)


def psnr_sweep(codec, image, psnr_targets, tol=0.1, bits_stored=None, with_ssim=False, max_iter=40):
    """Rate-distortion rows around the given PSNR targets: every setting tried while seeking each in turn.

    One :class:`PSNRSearch` serves all targets, so a point costs a few trials;
    each target gets a setting within ``tol`` dB above it (or the closest
    bracket, e.g. adjacent NEAR values) and the settings around it. Targets the
    codec cannot reach are skipped; an image the codec cannot code raises. Rows come
    fewest bytes first.
    """
    search = PSNRSearch(codec, image, bits_stored, with_ssim=with_ssim)
    for target in sorted(psnr_targets):
        try:
            search.seek(target, tol=tol, max_iter=max_iter)
        except UnreachableTargetError:
            continue
    return search.rows


def rd_curve(
    codec,
    image,
    psnr_targets=DEFAULT_PSNR_TARGETS,
    near_values=DEFAULT_NEAR_VALUES,
    bits_stored=None,
    with_ms_ssim=False,
):
    """Rate-distortion rows: one per PSNR target, or one per NEAR value for JPEG-LS.

    Targets the codec cannot reach with lossy coding are skipped.
    """
    if codec.sweep_params:
        return [measure(codec, image, p, bits_stored, with_ms_ssim) for p in near_values]
    search = PSNRSearch(codec, image, bits_stored)
    rows = []
    for target in psnr_targets:
        try:
            rows.append(at_psnr(codec, image, target, bits_stored=bits_stored, with_ms_ssim=with_ms_ssim,
                                search=search))
        except ValueError:
            continue
    return rows


def lossless_bpp(image, bits_stored=None, codecs=None):
    """Lossless bpp of JPEG-LS, JPEG 2000 and JPEG XL by codec name, checking each round trip is exact."""
    image = np.asarray(image)
    codecs = codecs if codecs is not None else (JPEGLS(), JPEG2000(), JPEGXL())
    result = {}
    for codec in codecs:
        decoded, n_bytes, _, _ = _roundtrip(codec, image, None, bits_stored)
        if not np.array_equal(decoded, image):
            raise RuntimeError(
                f"{codec.name} lossless round trip is not exact (max error "
                f"{metrics.max_abs_error(image, decoded)}); the imagecodecs build may be broken"
            )
        result[codec.name] = metrics.bpp(n_bytes, image.size)
    return result


class HEVC:
    """HEVC (x265 through the ``ffmpeg`` program) for frame sequences, at a constant QP.

    ``chroma="444"`` codes RGB as GBR planes (x265's 4:4:4 ``gbrp``: no colour conversion, the
    best HEVC can do for RGB); ``"420"`` converts to 8-bit YUV 4:2:0, the HEVC Main profile that
    DICOM's HEVC transfer syntaxes carry. Grey sequences are coded as ``gray`` (8 bits) or
    ``gray12le`` (9-12 bits). ``keyint`` is the intra period in frames (None: x265's default,
    250). The bytes counted are the raw Annex-B bitstream (no container). Lossy only.
    """

    name = "hevc"
    lossless = False

    def __init__(self, chroma="444", preset="medium", keyint=None, ffmpeg="ffmpeg"):
        if chroma not in ("444", "420"):
            raise ValueError(f"chroma must be '444' or '420', got {chroma!r}")
        self.chroma, self.preset, self.keyint, self.ffmpeg = chroma, preset, keyint, ffmpeg

    @staticmethod
    def available(ffmpeg="ffmpeg") -> bool:
        """True when ``ffmpeg`` runs and has the libx265 encoder."""
        exe = shutil.which(ffmpeg)
        if exe is None:
            return False
        out = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True)
        return out.returncode == 0 and "libx265" in out.stdout

    def _formats(self, frames):
        """(raw input pixel format, x265 pixel format, bits) of a (frames, rows, cols, samples) array."""
        samples, dtype = frames.shape[3], frames.dtype
        if samples == 3 and dtype == np.uint8:
            return "rgb24", ("gbrp" if self.chroma == "444" else "yuv420p"), 8
        if samples == 1 and dtype == np.uint8:
            return "gray", "gray", 8
        if samples == 1 and dtype == np.uint16:
            if frames.size and int(frames.max()) >= 1 << 12:
                raise ValueError("x265 codes at most 12 bits per sample; this sequence uses more")
            return "gray12le", "gray12le", 12
        raise ValueError(f"HEVC here codes 8-bit RGB or grey, or 9-12-bit grey; got {samples} samples of {dtype}")

    def _run(self, args):
        proc = subprocess.run([self.ffmpeg, "-hide_banner", "-loglevel", "error", "-y", *args],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")

    def encode(self, frames, qp):
        """(frames, rows, cols, samples) integer array -> HEVC bitstream bytes at constant ``qp`` (0..51)."""
        frames = np.asarray(frames)
        if frames.ndim != 4:
            raise ValueError(f"HEVC codes (frames, rows, cols, samples) arrays, got shape {frames.shape}")
        raw_fmt, pix_fmt, _ = self._formats(frames)
        qp = int(qp)
        if not 0 <= qp <= 51:
            raise ValueError(f"HEVC QP must be in 0..51, got {qp}")
        params = [f"qp={qp}", "log-level=error"] + ([f"keyint={int(self.keyint)}"] if self.keyint else [])
        with tempfile.TemporaryDirectory(prefix="hevc.") as tmp:
            src, dst = Path(tmp) / "in.raw", Path(tmp) / "out.hevc"
            np.ascontiguousarray(frames.astype(frames.dtype.newbyteorder("<"))).tofile(src)
            self._run(["-f", "rawvideo", "-pix_fmt", raw_fmt, "-s", f"{frames.shape[2]}x{frames.shape[1]}",
                       "-i", str(src), "-c:v", "libx265", "-preset", self.preset, "-pix_fmt", pix_fmt,
                       "-x265-params", ":".join(params), "-f", "hevc", str(dst)])
            return dst.read_bytes()

    def decode(self, data, shape, dtype):
        """HEVC bitstream -> (frames, rows, cols, samples) array of ``shape`` and ``dtype``."""
        frames, rows, cols, samples = shape
        raw_fmt, _, _ = self._formats(np.zeros((1, 1, 1, samples), dtype=dtype))
        with tempfile.TemporaryDirectory(prefix="hevc.") as tmp:
            src, dst = Path(tmp) / "in.hevc", Path(tmp) / "out.raw"
            src.write_bytes(data)
            self._run(["-f", "hevc", "-i", str(src), "-f", "rawvideo", "-pix_fmt", raw_fmt, str(dst)])
            out = np.fromfile(dst, dtype=np.dtype(dtype).newbyteorder("<"))
        if out.size != frames * rows * cols * samples:
            raise RuntimeError(f"ffmpeg decoded {out.size} samples, expected {frames * rows * cols * samples}")
        return out.reshape(shape).astype(dtype)

    def measure(self, frames, qp):
        """Row of one sequence at one QP: codec, param, n_bytes, bpp (per sample), psnr, encode_s, decode_s."""
        frames = np.asarray(frames)
        t0 = time.perf_counter()
        data = self.encode(frames, qp)
        t1 = time.perf_counter()
        decoded = self.decode(data, frames.shape, frames.dtype)
        t2 = time.perf_counter()
        return {"codec": f"{self.name}-{self.chroma}", "param": int(qp), "n_bytes": len(data),
                "bpp": metrics.bpp(len(data), frames.size), "psnr": metrics.psnr(frames, decoded),
                "max_abs_err": metrics.max_abs_error(frames, decoded), "encode_s": t1 - t0, "decode_s": t2 - t1}
