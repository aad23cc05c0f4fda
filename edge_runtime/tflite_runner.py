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
Determinism), so a kernel choice can change a pixel by rounding at most, never the stream: a
float post-filter can move a pixel by one (kernel libraries sum its convolutions in different
orders); the int8 post-filter cannot.

int8 bundles (a ``postfilter_int8`` entry in the manifest's ``tflite`` section): the decoder
graph is the inverse DWT alone and the post-filter of one transform (``transform``) is a
separate full-integer graph, ``postfilter.tflite``, signature ``postfilter``: input ``diff``
(1, H+2, W+2, 3) int8, output ``correction`` (1, H, W, 1) int8, where H x W is the padded plane.
Its float boundary is computed here, in numpy, with one rounding rule (round half to even,
then saturate to [-128, 127]), so every decoder feeds it the same integers:

- u = plane / step (float32), zero-padded by one sample before and two after each axis;
- channels 0 and 1: the forward differences u[i, j+1] - u[i, j] and u[i+1, j] - u[i, j] for
  i in -1..H, j in -1..W, divided by ``diff_scale`` (a power of two, so exactly), which is
  the input tensor's scale (zero point 0): differences beyond 128 * diff_scale quantizer
  steps saturate;
- channel 2, everywhere: round((log10 step - ``log_step_offset``) * ``log_step_gain``); the
  steps of the quality levels land on integers;
- the filtered plane is plane + step * (correction - zero_point) * scale (float32), with the
  output tensor's scale and zero point.

Inside the graph every requantization multiplier is a power of two 2^-k (k >= 3) and every
accumulator is 2 mod 4 (weights multiples of 4, biases 2 mod 4), so no product lies on or next
to a rounding tie: double-rounding fixed point (the reference kernels), single rounding
(optimized kernels) and float requantization (XNNPACK) all give the same integers
(export/int8.py builds the graph that way and checks it against exact integer
arithmetic).

Bundles with a learned lifting refinement (manifest ``refine``): its transform's decoder graph
holds the float refined inverse, but when the post-filter is int8 (or absent) the edge decodes
that transform with edge_runtime.refine instead: the refinement as an integer network and the
lifting in float64 numpy, so the decoded plane, like the int8 filter's output, is the same bits
with every kernel library and on every CPU. The encoder graph always runs in TFLite.
"""
from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import numpy as np

from edge_runtime import refine as exact_refine
from edge_runtime.bundle import InvalidBundleError

__all__ = ["KERNELS", "Int8PostFilter", "MissingTFLiteError", "TFLiteTransforms", "interpreter_module",
           "log_step_code", "postfilter_input", "postfilter_output", "postfilter_spec", "tflite_paths",
           "transforms_for_bundle"]

KERNELS = ("xnnpack", "reference")
ENCODER_FILE = "encoder.tflite"
DECODER_FILE = "decoder.tflite"
POSTFILTER_FILE = "postfilter.tflite"
POSTFILTER_SIGNATURE = "postfilter"


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
            raise RuntimeError("no TFLite interpreter installed: pip install ai-edge-litert==2.3.0 "
                               "(or tflite-runtime where no ai-edge-litert wheel exists)") from None
    return mod


def postfilter_spec(bundle) -> dict | None:
    """The manifest's int8 post-filter entry (``tflite.postfilter_int8``), or None (a float bundle)."""
    spec = (bundle.manifest.get("tflite") or {}).get("postfilter_int8")
    if not spec:
        return None
    missing = [k for k in ("transform", "diff_scale", "log_step_offset", "log_step_gain") if k not in spec]
    if missing:
        raise InvalidBundleError(f"{bundle.path}: manifest.json tflite.postfilter_int8 lacks {', '.join(missing)}; "
                                 f"re-run the int8 export (keras-codec export --quant int8)")
    return spec


def tflite_paths(bundle) -> dict:
    """{"encoder": path, "decoder": path} of a loaded bundle, and "postfilter" for an int8 bundle;
    MissingTFLiteError when a file is absent.

    The manifest's `tflite` section may name other files (`"encoder"` / `"decoder"` keys, the
    post-filter's `postfilter_int8.file`).
    """
    section = bundle.manifest.get("tflite") or {}
    paths = {}
    for role, default in (("encoder", ENCODER_FILE), ("decoder", DECODER_FILE)):
        name = section.get(role) if isinstance(section.get(role), str) else default
        paths[role] = Path(bundle.path) / name
    spec = postfilter_spec(bundle)
    if spec is not None:
        paths["postfilter"] = Path(bundle.path) / spec.get("file", POSTFILTER_FILE)
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise MissingTFLiteError(
            f"{bundle.path}: the bundle has no {' or '.join(missing)}, which the edge runtime needs: run the TFLite "
            f"export on a workstation (keras-codec export) to add {' and '.join(missing)}")
    return paths


def transforms_for_bundle(bundle, kernels: str = "xnnpack", num_threads: int = 2) -> dict:
    """{wavelet name: TFLiteTransforms} for every transform the bundle's coder may choose."""
    params = bundle.manifest["codec"]
    names = params.get("transforms", [params.get("wavelet", "cdf97")])
    paths = tflite_paths(bundle)
    spec = postfilter_spec(bundle)
    in_graph = (bundle.manifest.get("tflite") or {}).get("postfilter") or {}
    out = {}
    for n in names:
        int8 = spec if spec is not None and spec["transform"] == n else None
        # A learned refinement of this transform decodes through edge_runtime.refine (integer network,
        # bit-exact) unless a float post-filter lives inside decoder.tflite (float32/float16 exports).
        refine = bundle.refine
        if refine is None or refine.wavelet != n or (in_graph.get(n) and int8 is None):
            refine = None
        out[n] = TFLiteTransforms(paths, n, kernels=kernels, num_threads=num_threads, postfilter=int8,
                                  refine=refine, mode=params.get("mode", "symmetric"))
    return out


def postfilter_input(plane: np.ndarray, step: float, spec: dict) -> np.ndarray:
    """The int8 post-filter's input (1, H+2, W+2, 3) for a padded plane (H, W): see the module docstring."""
    rows, cols = plane.shape
    inv = np.float32(1.0 / float(spec["diff_scale"]))
    if float(inv) != 2.0 ** round(np.log2(float(inv))):
        raise InvalidBundleError(f"post-filter diff_scale {spec['diff_scale']} is not a power of two")
    u = np.zeros((rows + 3, cols + 3), np.float32)
    u[1:rows + 1, 1:cols + 1] = np.asarray(plane, np.float32) / np.float32(step)
    q = np.empty((1, rows + 2, cols + 2, 3), np.int8)
    for ch, d in enumerate((u[:rows + 2, 1:] - u[:rows + 2, :-1], u[1:, :cols + 2] - u[:-1, :cols + 2])):
        q[0, :, :, ch] = np.clip(np.rint(d * inv), -128, 127)
    q[0, :, :, 2] = log_step_code(step, spec)
    return q


def log_step_code(step: float, spec: dict) -> int:
    """The log-step channel's value: round((log10 step - offset) * gain), saturated to int8."""
    v = (math.log10(float(step)) - float(spec["log_step_offset"])) * float(spec["log_step_gain"])
    return int(np.clip(np.rint(v), -128, 127))


def postfilter_output(plane: np.ndarray, step: float, correction: np.ndarray, scale: float,
                      zero_point: int) -> np.ndarray:
    """plane + step * dequantized correction, in float32 (correction (H, W) int8 in quantizer steps)."""
    r = (np.asarray(correction, np.float32) - np.float32(zero_point)) * np.float32(scale)
    return np.asarray(plane, np.float32) + np.float32(step) * r


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


POSTFILTER_STRIP = 64
"""Rows per post-filter run. Small runs keep TFLite's scratch small: the first run of a shape faults its memory in
(about 2.8 us a page here), 8 ms for a 512-wide strip of 64 rows against 45-60 ms for a whole 512x512 plane, and
the later runs cost the same or less (the activations stay in the CPU's cache; a 2k x 2k plane in one run needed
~0.5 GB)."""
POSTFILTER_HALO = 8
"""Context rows above and below a strip for a graph whose reach is not known (`_reach_rows`): a generous bound."""
_POINTWISE_OPS = frozenset({"QUANTIZE", "DEQUANTIZE", "ADD", "SUB", "MUL", "RELU", "RELU6", "RELU_N1_TO_1",
                            "LEAKY_RELU", "PRELU", "TANH", "LOGISTIC", "HARD_SWISH"})
"""Ops of an int8 post-filter graph that read only a pixel's own values (any other but a convolution: the generous
bound)."""


def _reach_rows(path: str, mod) -> int:
    """Rows each output row of an int8 post-filter graph sees beyond its own on each side: the sum of its
    convolutions' radii ((k - 1) / 2 for k x k kernels, undilated, as the exporter writes them), read from the
    graph itself; POSTFILTER_HALO if it holds another op that could look further."""
    try:
        interp = mod.Interpreter(model_path=path, experimental_op_resolver_type=(
            mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
        reach = 0
        for op in interp._get_ops_details():
            if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                kernel_rows = int(interp._get_tensor_details(int(op["inputs"][1]), 0)["shape"][1])
                reach += (kernel_rows - 1) // 2
            elif op["op_name"] not in _POINTWISE_OPS:
                return POSTFILTER_HALO
        return reach
    except (AttributeError, IndexError, KeyError, TypeError, ValueError, RuntimeError):
        return POSTFILTER_HALO


class Int8PostFilter:
    """The full-integer post-filter graph with its float boundary: ``pf(plane, step)`` -> filtered plane."""

    def __init__(self, path, spec: dict, kernels: str = "xnnpack", num_threads: int = 2):
        self.path, self.spec = Path(path), dict(spec)
        if not self.path.is_file():
            raise MissingTFLiteError(f"{self.path}: no such TFLite model: run the int8 export on a workstation "
                                     f"(keras-codec export --quant int8) to add it to the bundle")
        self.kernels, self.num_threads = kernels, int(num_threads)
        self._sig = None

    def _signature(self) -> _Signature:
        if self._sig is None:
            interp = _interpreter(str(self.path.resolve()), self.path.stat().st_mtime_ns, self.kernels,
                                  self.num_threads)
            key = self.spec.get("signature", POSTFILTER_SIGNATURE)
            if key not in interp.get_signature_list():
                raise MissingTFLiteError(f"{self.path}: no signature {key!r}; re-run the int8 export")
            sig = _Signature(interp, key, self.path)
            if len(sig.inputs) != 1 or len(sig.outputs) != 1:
                raise InvalidBundleError(f"{self.path}: signature {key} has {len(sig.inputs)} inputs and "
                                         f"{len(sig.outputs)} outputs, expected one of each")
            (d_in,), (d_out,) = sig.inputs.values(), sig.outputs.values()
            scale, zero_point = d_in["quantization"]
            if (d_in["dtype"] != np.int8 or d_out["dtype"] != np.int8 or len(d_in["shape"]) != 4
                    or d_in["shape"][-1] != 3 or scale != float(self.spec["diff_scale"]) or zero_point != 0):
                raise InvalidBundleError(
                    f"{self.path}: signature {key} takes {d_in['dtype'].__name__} {list(d_in['shape'])} with scale "
                    f"{scale}, zero point {zero_point}; expected int8 (1, H+2, W+2, 3) with the manifest's "
                    f"diff_scale {self.spec['diff_scale']} and zero point 0")
            self._halo = _reach_rows(str(self.path.resolve()), interpreter_module())
            self._sig = sig
        return self._sig

    def delegated(self) -> bool:
        """Whether TFLite runs the graph (in part) through a delegate, XNNPACK on a CPU: read from the
        interpreter's execution plan after a run, not assumed from the kernels asked for (a runtime
        driven through signature runners may apply none)."""
        self._signature()
        interp = _interpreter(str(self.path.resolve()), self.path.stat().st_mtime_ns, self.kernels, self.num_threads)
        return any(op.get("op_name") == "DELEGATE" for op in interp._get_ops_details())

    def __call__(self, plane: np.ndarray, step: float, strip: int | None = None) -> np.ndarray:
        """The filtered plane. Planes taller than `strip` (default POSTFILTER_STRIP) rows run in strips of `strip`
        rows with as many rows of context on each side as the graph's convolutions reach (`_reach_rows`), so
        TFLite's scratch memory stays small; integer arithmetic makes the result the same bits."""
        sig = self._signature()
        (name_in,), (name_out,) = sig.inputs, sig.outputs
        scale, zero_point = sig.outputs[name_out]["quantization"]
        x = postfilter_input(plane, step, self.spec)
        rows = plane.shape[0]
        strip = POSTFILTER_STRIP if strip is None else strip
        halo = self._halo
        q = np.empty(plane.shape, np.int8)
        window = min(rows, strip + 2 * halo)
        for r0 in range(0, rows, strip):
            r1 = min(rows, r0 + strip)
            # every window the same height (the first and last slide inward): TFLite re-plans its
            # tensors whenever the input shape changes; rows beyond the halo change no output row
            a = max(0, min(r0 - halo, rows - window))
            b = a + window
            out = np.asarray(sig({name_in: np.ascontiguousarray(x[:, a:b + 2])})[name_out])
            if out.shape != (1, b - a, plane.shape[1], 1):
                raise InvalidBundleError(f"{self.path}: the post-filter gives shape {out.shape} for rows "
                                         f"{a}..{b} of a plane {plane.shape}")
            q[r0:r1] = out[0, r0 - a:r1 - a, :, 0]
        return postfilter_output(plane, step, q, scale, zero_point)


RELEASE_PIXELS = 1 << 21
"""After analysing a plane larger than this, the encoder graph's interpreter is dropped: TFLite keeps the largest
activations it ever held (about 150 bytes a pixel: 450 MB for a 1760x1760 radiograph) for the interpreter's life,
beside everything the encode does next; building it again costs a few milliseconds."""


class TFLiteTransforms:
    """`analysis(plane, levels)` / `synthesis(bands, levels, step)` over a bundle's TFLite graphs.

    `model_paths` is {"encoder": path, "decoder": path} (see :func:`tflite_paths`); `wavelet`
    picks the signatures (``f"{wavelet}_L{levels}"``). `postfilter` (an int8 bundle's
    ``postfilter_int8`` entry, with `model_paths["postfilter"]`) runs the int8 post-filter
    after the decoder graph.
    """

    def __init__(self, model_paths: dict, wavelet: str, kernels: str = "xnnpack", num_threads: int = 2,
                 postfilter: dict | None = None, refine=None, mode: str = "symmetric"):
        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
        if int(num_threads) < 1:
            raise ValueError(f"num_threads must be at least 1, got {num_threads!r}")
        self.paths = {role: Path(model_paths[role]) for role in ("encoder", "decoder")}
        for p in self.paths.values():
            if not p.is_file():
                raise MissingTFLiteError(
                    f"{p}: no such TFLite model: run the TFLite export on a workstation "
                    f"(keras-codec export) to add encoder.tflite and decoder.tflite to the bundle")
        self.wavelet, self.kernels, self.num_threads = wavelet, kernels, int(num_threads)
        self.refine, self.mode = refine, mode
        self.postfilter = None
        if postfilter is not None:
            path = model_paths.get("postfilter", Path(self.paths["decoder"]).parent / POSTFILTER_FILE)
            self.postfilter = Int8PostFilter(path, postfilter, kernels=kernels, num_threads=num_threads)
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

    def release(self, role: str) -> None:
        """Drop the interpreter of `role` ("encoder" or "decoder") with its tensors; the next call builds it again."""
        for key in [k for k in self._sigs if k[0] == role]:
            del self._sigs[key]
        _interpreter.cache_clear()  # the other graphs' interpreters live on in the signatures that hold them

    def analysis(self, plane2d: np.ndarray, levels: int) -> list:
        """2-D padded plane -> [LL, (H, V, D) coarse, ..., (H, V, D) finest] as float32 arrays."""
        sig = self._signature("encoder", levels)
        if len(sig.inputs) != 1:
            raise InvalidBundleError(f"{sig.path}: signature {sig.key} has {len(sig.inputs)} inputs, expected 1")
        name = next(iter(sig.inputs))
        out = sig({name: np.ascontiguousarray(plane2d, np.float32)[None, :, :, None]})
        arrays = [np.asarray(out[k]) for k in sorted(out, key=_natural_key)]  # copies of the output tensors
        if plane2d.size > RELEASE_PIXELS:
            self.release("encoder")
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

    def refined_output(self, y: np.ndarray, step: float) -> np.ndarray:
        """The decoded plane from the refined inverse's output `y` (float64, edge_runtime.refine.synthesis): float32,
        then the post-filter."""
        y = y.astype(np.float32)
        return self.postfilter(y, step) if self.postfilter is not None else y

    def synthesis(self, bands: list, levels: int, step: float | None = None) -> np.ndarray:
        """[LL, (H, V, D) ...] coarse to fine, dequantized -> 2-D plane. `step` feeds the post-filter."""
        if step is None:
            raise ValueError("the TFLite decoder graph takes the quantizer step: call synthesis(bands, levels, step=step)")
        if self.refine is not None:  # the refined inverse as an integer network in numpy: the same bits everywhere
            return self.refined_output(exact_refine.synthesis(bands, levels, self.refine, self.wavelet, self.mode),
                                       step)
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
        y = y.reshape(y.shape[1], y.shape[2])
        return self.postfilter(y, step) if self.postfilter is not None else y
