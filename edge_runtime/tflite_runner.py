"""The wavelet analysis / synthesis graphs of a bundle, run with a TFLite interpreter (never TensorFlow).

A bundle's `encoder.tflite` and `decoder.tflite` each hold one signature per (transform, levels),
keyed ``f"{wavelet}_L{levels}"`` (e.g. ``cdf97_L5``, ``haar_L3``):

- encoder: one input, the padded plane (1, H, W, 1) float32; outputs LL (1, h, w, 1) and one
  details tensor (1, h, w, 3) per level, coarse to fine;
- decoder: inputs the same bands in the same order, then ``step`` (the quantizer step, float32,
  shape (1,)); output the plane (1, H, W, 1).

Tensors are matched by role, not by the converter's internal order: the encoder's outputs by
shape (the one-channel LL first, then the details from coarse to fine), the decoder's band
inputs by name in natural order (``input_2`` before ``input_10``) with the step found as the
input of rank < 4 (or named ``step``). Dynamic H x W graphs are resized to each plane by the
signature runner; static ones must be called with their own shape.

Kernels: ``"xnnpack"`` is TFLite's default (the XNNPACK delegate where it applies),
``"reference"`` the portable reference kernels (``OpResolverType.BUILTIN_REF``), slower but
the same on every CPU. Only the wavelet graphs run here; the table indices that entropy
decoding depends on come from the integer context model in numpy (see DESIGN.md,
Determinism), so a kernel choice can change a pixel by rounding at most, never the stream.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from edge_runtime.bundle import InvalidBundleError

__all__ = ["KERNELS", "MissingTFLiteError", "TFLiteTransforms", "interpreter_module", "tflite_paths",
           "transforms_for_bundle"]

KERNELS = ("xnnpack", "reference")
ENCODER_FILE = "encoder.tflite"
DECODER_FILE = "decoder.tflite"


class MissingTFLiteError(InvalidBundleError):
    """A bundle without the TFLite graphs the edge needs (or without the signature a plane needs)."""


def interpreter_module():
    """`ai_edge_litert.interpreter` when installed, else `tflite_runtime.interpreter`."""
    try:
        from ai_edge_litert import interpreter as mod
    except ImportError:
        try:
            from tflite_runtime import interpreter as mod
        except ImportError:
            raise RuntimeError("no TFLite interpreter installed: pip install tflite-runtime==2.14.0 "
                               "(or ai-edge-litert)") from None
    return mod


def tflite_paths(bundle) -> dict:
    """{"encoder": path, "decoder": path} of a loaded bundle; MissingTFLiteError when absent.

    The manifest's `tflite` section may name other files (`"encoder"` / `"decoder"` keys).
    """
    section = bundle.manifest.get("tflite") or {}
    paths = {}
    for role, default in (("encoder", ENCODER_FILE), ("decoder", DECODER_FILE)):
        name = section.get(role) if isinstance(section.get(role), str) else default
        paths[role] = Path(bundle.path) / name
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise MissingTFLiteError(
            f"{bundle.path}: the bundle has no {' or '.join(missing)}, which the edge runtime needs: run the TFLite "
            f"export on a workstation (export/tflite_export.py) to add encoder.tflite and decoder.tflite")
    return paths


def transforms_for_bundle(bundle, kernels: str = "xnnpack", num_threads: int = 2) -> dict:
    """{wavelet name: TFLiteTransforms} for every transform the bundle's coder may choose."""
    params = bundle.manifest["codec"]
    names = params.get("transforms", [params.get("wavelet", "cdf97")])
    paths = tflite_paths(bundle)
    return {n: TFLiteTransforms(paths, n, kernels=kernels, num_threads=num_threads) for n in names}


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@functools.lru_cache(maxsize=8)
def _interpreter(path: str, mtime_ns: int, kernels: str, num_threads: int):
    """One interpreter per (file, kernels, threads), shared by every transform that uses the file."""
    mod = interpreter_module()
    resolver = mod.OpResolverType.BUILTIN_REF if kernels == "reference" else mod.OpResolverType.AUTO
    try:
        return mod.Interpreter(model_path=path, num_threads=num_threads, experimental_op_resolver_type=resolver)
    except (ValueError, RuntimeError) as exc:
        raise InvalidBundleError(f"{path}: not a loadable TFLite model ({exc})") from None


class _Signature:
    """One signature of one model file, with its tensors sorted by role."""

    def __init__(self, interpreter, key: str, path: Path):
        self.runner = interpreter.get_signature_runner(key)
        self.key, self.path = key, path
        self.inputs = self.runner.get_input_details()
        self.outputs = self.runner.get_output_details()

    def __call__(self, feed: dict) -> dict:
        try:
            return self.runner(**feed)
        except (ValueError, RuntimeError) as exc:
            shapes = {k: tuple(v.shape) for k, v in feed.items()}
            raise ValueError(f"{self.path.name} signature {self.key}: cannot run on inputs {shapes} ({exc}); "
                             f"a graph exported with static shapes only takes planes of its own size") from None


class TFLiteTransforms:
    """`analysis(plane, levels)` / `synthesis(bands, levels, step)` over a bundle's TFLite graphs.

    `model_paths` is {"encoder": path, "decoder": path} (see :func:`tflite_paths`); `wavelet`
    picks the signatures (``f"{wavelet}_L{levels}"``).
    """

    def __init__(self, model_paths: dict, wavelet: str, kernels: str = "xnnpack", num_threads: int = 2):
        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
        if int(num_threads) < 1:
            raise ValueError(f"num_threads must be at least 1, got {num_threads!r}")
        self.paths = {role: Path(model_paths[role]) for role in ("encoder", "decoder")}
        for p in self.paths.values():
            if not p.is_file():
                raise MissingTFLiteError(
                    f"{p}: no such TFLite model: run the TFLite export on a workstation "
                    f"(export/tflite_export.py) to add encoder.tflite and decoder.tflite to the bundle")
        self.wavelet, self.kernels, self.num_threads = wavelet, kernels, int(num_threads)
        self._sigs = {}

    def _signature(self, role: str, levels: int) -> _Signature:
        key = f"{self.wavelet}_L{int(levels)}"
        if (role, key) not in self._sigs:
            path = self.paths[role]
            interp = _interpreter(str(path.resolve()), path.stat().st_mtime_ns, self.kernels, self.num_threads)
            available = sorted(interp.get_signature_list())
            if key not in available:
                raise MissingTFLiteError(
                    f"{path}: no signature {key!r} (has {', '.join(available) or 'none'}); re-run the TFLite "
                    f"export with this transform and level count")
            self._sigs[(role, key)] = _Signature(interp, key, path)
        return self._sigs[(role, key)]

    def analysis(self, plane2d: np.ndarray, levels: int) -> list:
        """2-D padded plane -> [LL, (H, V, D) coarse, ..., (H, V, D) finest] as float32 arrays."""
        sig = self._signature("encoder", levels)
        if len(sig.inputs) != 1:
            raise InvalidBundleError(f"{sig.path}: signature {sig.key} has {len(sig.inputs)} inputs, expected 1")
        name = next(iter(sig.inputs))
        out = sig({name: np.ascontiguousarray(plane2d, np.float32)[None, :, :, None]})
        arrays = [np.asarray(out[k]) for k in sorted(out, key=_natural_key)]
        if len(arrays) != levels + 1 or any(a.ndim != 4 for a in arrays):
            raise InvalidBundleError(
                f"{sig.path}: signature {sig.key} gives {len(arrays)} outputs of shapes "
                f"{[a.shape for a in arrays]}, expected LL and {levels} NHWC details tensors")
        ll = [a for a in arrays if a.shape[-1] == 1]
        details = sorted((a for a in arrays if a.shape[-1] == 3), key=lambda a: a.shape[1] * a.shape[2])
        if len(ll) != 1 or len(details) != levels:
            raise InvalidBundleError(
                f"{sig.path}: signature {sig.key} outputs have channels {[a.shape[-1] for a in arrays]}, "
                f"expected one LL (1 channel) and {levels} details (3 channels)")
        return [ll[0][0, :, :, 0]] + [tuple(d[0, :, :, i] for i in range(3)) for d in details]

    def synthesis(self, bands: list, levels: int, step: float | None = None) -> np.ndarray:
        """[LL, (H, V, D) ...] coarse to fine, dequantized -> 2-D plane. `step` feeds the post-filter."""
        if step is None:
            raise ValueError("the TFLite decoder graph takes the quantizer step: call synthesis(bands, levels, step=step)")
        sig = self._signature("decoder", levels)
        names = sorted(sig.inputs, key=_natural_key)
        step_names = [n for n in names if len(sig.inputs[n]["shape"]) < 4] or [n for n in names if "step" in n]
        if len(step_names) != 1 or len(names) != levels + 2:
            raise InvalidBundleError(
                f"{sig.path}: signature {sig.key} takes inputs {names}; expected {levels + 1} bands and one step")
        band_names = [n for n in names if n != step_names[0]]
        arrays = [np.asarray(bands[0], np.float32)[None, :, :, None]]
        arrays += [np.stack(trio, axis=-1).astype(np.float32)[None] for trio in bands[1:]]
        feed = {n: np.ascontiguousarray(a) for n, a in zip(band_names, arrays)}
        step_shape = tuple(int(d) for d in sig.inputs[step_names[0]]["shape"]) or (1,)
        feed[step_names[0]] = np.full(step_shape, float(step), np.float32)
        out = sig(feed)
        if len(out) != 1:
            raise InvalidBundleError(f"{sig.path}: signature {sig.key} has {len(out)} outputs, expected 1")
        y = np.asarray(next(iter(out.values())))
        return y.reshape(y.shape[1], y.shape[2])
