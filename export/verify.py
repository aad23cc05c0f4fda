"""Checks of the exported graphs against the Keras model they were made from.

:func:`verify_export` compares every signature with the Keras transforms on random planes (and the
int8 post-filter with exact integer arithmetic); :func:`test_split_report` and :func:`bd_rate_report`
compare bpp and PSNR on real images; :func:`quantization_report` gathers these for float32, float16
and int8 with the bundle sizes and :func:`transform_quantization_ceiling`, which shows why the
lifting transforms stay float32. :func:`run_signature` runs one signature of a graph.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from edge_runtime import bitstream as bs
from edge_runtime.bundle import load_bundle
from edge_runtime.codec import (QUALITY_LEVELS, decode_image, encode_image, levels_for, pad_plane, padded_shape,
                                quantizer_step)
from edge_runtime.runtime import load_codec
from edge_runtime.tflite_runner import (POSTFILTER_FILE, POSTFILTER_SIGNATURE, Int8PostFilter, postfilter_input,
                                        postfilter_spec)
from export.conversion import QUANT_MODES, export_transforms
from export.graphs import band_name, decoder_fn, manifest_levels, manifest_transforms, wavelet_config
from export.int8 import integer_reference, train_planes
from export.tflite_utils import _interpreter_class
from keras_codec.evaluation import metrics
from keras_codec.evaluation.evaluate import evaluation_images
from keras_codec.models.default import DefaultCodec, bundle_transforms
from keras_codec.models.wavelet import WaveletTransforms, join_details, load_postfilter

__all__ = ["verify_export", "run_signature", "op_names", "test_split_report", "bd_rate_report", "bundle_sizes",
           "transform_quantization_ceiling", "quantization_report"]


def _interpreter(model, num_threads: int = 1):
    """A TFLite interpreter of `model` (bytes, a path, or an interpreter returned as is)."""
    if hasattr(model, "get_signature_runner"):
        return model
    Interpreter = _interpreter_class()
    if isinstance(model, (bytes, bytearray)):
        return Interpreter(model_content=bytes(model), num_threads=num_threads)
    return Interpreter(model_path=str(model), num_threads=num_threads)


def run_signature(model, key: str, inputs, num_threads: int = 1) -> list:
    """Run signature `key` of a TFLite model (bytes, a path or an Interpreter) once.

    `inputs` is a dict by input name or a list in sorted-name order; the inputs are
    resized as needed (dynamic H, W). Returns the outputs in sorted-name order.
    """
    interpreter = _interpreter(model, num_threads)
    signatures = interpreter.get_signature_list()
    if key not in signatures:
        raise ValueError(f"the model has no signature {key!r}; it has {sorted(signatures)}")
    names = sorted(signatures[key]["inputs"])
    if not isinstance(inputs, dict):
        inputs = list(inputs)
        if len(inputs) != len(names):
            raise ValueError(f"signature {key!r} takes {len(names)} inputs {names}; got {len(inputs)}")
        inputs = dict(zip(names, inputs))
    if sorted(inputs) != names:
        raise ValueError(f"signature {key!r} takes inputs {names}; got {sorted(inputs)}")
    runner = interpreter.get_signature_runner(key)
    details = runner.get_input_details()
    feed = {n: np.ascontiguousarray(x, dtype=details[n]["dtype"]) for n, x in inputs.items()}
    results = runner(**feed)
    return [np.array(results[n]) for n in sorted(signatures[key]["outputs"])]


def op_names(model) -> set:
    """The op names used by a TFLite model (builtins are upper case, e.g. ``STRIDED_SLICE``)."""
    interpreter = _interpreter(model)
    return {op["op_name"] for op in interpreter._get_ops_details()}


def verify_export(bundle_dir, shapes=((64, 96), (128, 128)), seed: int = 0, step: float | None = None,
                  num_threads: int = 1) -> dict:
    """TFLite vs Keras (`keras_codec.models.wavelet.WaveletTransforms`) on random planes.

    For every signature: analysis of a random plane per shape (each shape rounded up to a
    multiple of 2**levels) through ``encoder.tflite`` and through Keras, and synthesis of
    the Keras bands through ``decoder.tflite`` and through Keras (with the post-filter, at
    quantizer step `step`, default the finest quality's). Returns
    ``{key: {"encoder": max abs diff, "decoder": max abs diff}}`` and the overall maximum
    under ``"max_abs_diff"``.

    int8 bundles: ``decoder`` compares the decoder graph with the Keras inverse DWT alone
    (both float32, so it is exact like the encoder), and ``"postfilter_int8"`` gives the int8
    filter's largest deviation from the Keras float filter on those planes, in quantizer steps
    (random planes are harsh: their differences saturate the int8 input), and whether the
    TFLite graph equals :func:`export.int8.integer_reference` (it must: that is the determinism guarantee).
    """
    bundle = load_bundle(bundle_dir)
    section = bundle.manifest.get("tflite")
    if not section:
        raise RuntimeError(f"{bundle_dir}: the bundle has no TFLite export; run export_transforms first")
    step = quantizer_step(QUALITY_LEVELS[-1]) if step is None else float(step)
    enc = _interpreter(bundle.path / section["encoder"], num_threads)
    dec = _interpreter(bundle.path / section["decoder"], num_threads)
    spec = postfilter_spec(bundle)
    int8 = None
    if spec is not None:
        pf_path = bundle.path / spec.get("file", POSTFILTER_FILE)
        int8 = {"run": Int8PostFilter(pf_path, spec, kernels="reference", num_threads=num_threads),
                "model": pf_path.read_bytes(), "max_abs_diff_steps": 0.0, "equals_integer_reference": True}
    rng = np.random.default_rng(seed)
    report, worst = {}, 0.0
    keras, plain = {}, {}
    for key in section["signature_order"]:
        sig = section["signatures"][key]
        name, levels = sig["transform"], int(sig["levels"])
        if name not in keras:
            keras[name] = bundle_transforms(bundle, name, load_postfilter(bundle, wavelet=name))
            plain[name] = (bundle_transforms(bundle, name) if int8 is not None and spec["transform"] == name
                           else keras[name])
        wt = keras[name]
        e_diff = d_diff = 0.0
        for rows, cols in shapes:
            rows, cols = padded_shape(rows, cols, levels)
            plane = rng.random((rows, cols), dtype=np.float32)
            bands = wt.analysis(plane, levels)
            expected = join_details(bands)
            got = run_signature(enc, key, [plane[None, :, :, None]])
            e_diff = max(e_diff, max(float(np.abs(g - e).max()) for g, e in zip(got, expected)))
            (y_tfl,) = run_signature(dec, key, expected + [np.array([step], np.float32)])
            y_tfl = y_tfl[0, :, :, 0]
            d_diff = max(d_diff, float(np.abs(y_tfl - plain[name].synthesis(bands, levels, step=step)).max()))
            if plain[name] is not wt:
                y_keras = wt.synthesis(bands, levels, step=step)
                int8["max_abs_diff_steps"] = max(int8["max_abs_diff_steps"],
                                                 float(np.abs(int8["run"](y_tfl, step) - y_keras).max()) / step)
                q = postfilter_input(y_tfl, step, spec)
                (r,) = run_signature(int8["model"], spec.get("signature", POSTFILTER_SIGNATURE), [q])
                int8["equals_integer_reference"] &= bool(np.array_equal(r, integer_reference(int8["model"], q)))
        report[key] = {"encoder": e_diff, "decoder": d_diff}
        worst = max(worst, e_diff, d_diff)
    report["max_abs_diff"] = worst
    if int8 is not None:
        report["postfilter_int8"] = {k: int8[k] for k in ("max_abs_diff_steps", "equals_integer_reference")}
    return report


def test_split_report(bundle_dir, qualities=(12, 17), folder=None, progress=print) -> list[dict]:
    """Keras against the exported TFLite graphs on real images: bpp and PSNR of the same streams.

    Each test image (or each image under `folder`) is encoded by the workstation coder and by
    the edge coder at each quality, and each stream decoded by both; the rows give the bpp of
    both streams and the PSNR of the TFLite decode minus the Keras decode.
    """
    bundle = load_bundle(bundle_dir)
    keras_coder = DefaultCodec.from_bundle(bundle).coder
    _b, edge_coder = load_codec(bundle)
    quant = bundle.manifest.get("tflite", {}).get("quantization", "float32")
    rows = []
    for name, img in evaluation_images(folder):
        for q in qualities:
            ref = encode_image(img, coder=keras_coder, model_id=bundle.model_id, quality=q)
            out = encode_image(img, coder=edge_coder, model_id=bundle.model_id, quality=q)
            p_ref = metrics.psnr(img.pixels, decode_image(ref, coder=keras_coder)[0].pixels)
            p_out = metrics.psnr(img.pixels, decode_image(out, coder=edge_coder)[0].pixels)
            n = img.pixels.size
            row = {"image": name, "quality": q, "quant": quant, "bpp_keras": 8 * len(ref) / n,
                   "bpp_tflite": 8 * len(out) / n, "psnr_keras": p_ref, "psnr_tflite": p_out,
                   "same_stream": ref == out}
            rows.append(row)
            progress(f"{name:36s} q{q:<3d} {quant}: bpp {row['bpp_keras']:.4f} -> {row['bpp_tflite']:.4f}  "
                     f"PSNR {p_ref:.3f} -> {p_out:.3f} dB ({p_out - p_ref:+.3f})"
                     f"{'  identical stream' if ref == out else ''}")
    return rows


def bd_rate_report(anchor_dir, test_dir, qualities=None, folder=None, progress=print) -> dict:
    """BD-rate of bundle `test_dir` against bundle `anchor_dir`, both through their TFLite graphs, over
    40-55 dB (`keras_codec.evaluation.metrics.bd_rate`), per test image (or image under `folder`) and the mean.

    The two bundles must be quantizations of one model: the same context model and tables, and
    encoders (float32 in every mode) that code the same streams but for the model id, which is
    checked on each image's first quality (two conversions of one graph need not be the same
    bytes). Each stream, coded once by the anchor, is decoded by both.
    """
    anchor, anchor_coder = load_codec(anchor_dir)
    test, test_coder = load_codec(test_dir)
    for name in ("context.npz", "tables.npz"):
        if (Path(anchor_dir) / name).read_bytes() != (Path(test_dir) / name).read_bytes():
            raise ValueError(f"{anchor_dir} and {test_dir} differ in {name}: not two quantizations of one model")
    qualities = list(qualities or QUALITY_LEVELS)
    images = {}
    for name, img in evaluation_images(folder):
        curve_a, curve_t = [], []
        for q in qualities:
            data = encode_image(img, coder=anchor_coder, model_id=anchor.model_id, quality=q)
            if q == qualities[0]:
                own = encode_image(img, coder=test_coder, model_id=test.model_id, quality=q)
                if bs.parse(own)[1] != bs.parse(data)[1]:
                    raise RuntimeError(f"{name}: the two bundles code different streams at quality {q}")
            bpp = 8 * len(data) / img.pixels.size
            curve_a.append((bpp, metrics.psnr(img.pixels, decode_image(data, coder=anchor_coder)[0].pixels)))
            curve_t.append((bpp, metrics.psnr(img.pixels, decode_image(data, coder=test_coder)[0].pixels)))
        a, t = np.array(curve_a), np.array(curve_t)
        bd = metrics.bd_rate(a[:, 0], a[:, 1], t[:, 0], t[:, 1], 40.0, 55.0)
        inside = (a[:, 1] >= 40.0) & (a[:, 1] <= 55.0)
        dpsnr = float(np.mean(t[inside, 1] - a[inside, 1])) if inside.any() else float("nan")
        images[name] = {"bd_rate": bd, "mean_dpsnr_40_55": dpsnr, "anchor": curve_a, "test": curve_t}
        progress(f"{name:36s} BD-rate {bd:+.2f} %  (mean PSNR change {dpsnr:+.3f} dB over {int(inside.sum())} "
                 f"qualities in 40-55 dB)")
    finite = [v["bd_rate"] for v in images.values() if np.isfinite(v["bd_rate"])]
    mean = float(np.mean(finite)) if finite else float("nan")
    progress(f"mean BD-rate over {len(finite)} images: {mean:+.2f} %")
    return {"images": images, "mean_bd_rate": mean, "qualities": qualities}


def bundle_sizes(bundle_dir) -> dict:
    """{file name: bytes} of every file in a bundle directory, and "total"."""
    sizes = {p.name: p.stat().st_size for p in sorted(Path(bundle_dir).iterdir()) if p.is_file()}
    return {**sizes, "total": sum(sizes.values())}


def transform_quantization_ceiling(bundle_dir, folder=None, modes=("int8", "int16x8"), crop: int = 256,
                                   progress=print) -> list[dict]:
    """PSNR ceiling that quantizing the lifting synthesis would impose: why it stays float32.

    The bundle's inverse DWT (no post-filter) of each needed depth is converted with full-integer
    quantization (``int8``; ``int16x8``: int16 activations, int8 weights, ops without a 16x8
    kernel left float), calibrated on the central `crop`² of train-split planes, and run on the
    exact, unquantized coefficients of every test plane (or image under `folder`). PSNR over the
    plane's dynamic range, per image.
    """
    bundle = load_bundle(bundle_dir)
    name = (bundle.manifest.get("postfilter") or {}).get("wavelet") or manifest_transforms(bundle.manifest)[0]
    cfg = wavelet_config(bundle.manifest, name)
    wt = WaveletTransforms(cfg)
    train = [x[(x.shape[0] - crop) // 2:(x.shape[0] - crop) // 2 + crop,
               (x.shape[1] - crop) // 2:(x.shape[1] - crop) // 2 + crop]
             for x in train_planes() if min(x.shape) >= crop]
    ops = {"int8": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8],
           "int16x8": [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                       tf.lite.OpsSet.TFLITE_BUILTINS]}
    graphs = {}

    def graph(mode, levels):
        if (mode, levels) not in graphs:
            fn, _ = decoder_fn(cfg, levels, None)
            names = [band_name(i) for i in range(levels + 1)]
            samples = [dict(zip(names, join_details(wt.analysis(x.astype(np.float32), levels))),
                            step=np.array([0.01], np.float32)) for x in train]
            module = tf.Module()
            module.fn = fn
            with tempfile.TemporaryDirectory() as tmp:
                tf.saved_model.save(module, tmp, signatures={"synthesis": fn.get_concrete_function()})
                converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["synthesis"])
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.representative_dataset = lambda: iter(samples)
                converter.target_spec.supported_ops = ops[mode]
                graphs[(mode, levels)] = converter.convert()
        return graphs[(mode, levels)]

    rows = []
    for img_name, img in evaluation_images(folder):
        originals, decoded = [], {m: [] for m in modes}
        for f in range(img.frames):
            for smp in range(img.samples):
                px = img.pixels[f, :, :, smp].astype(np.float64)
                x = (px - px.min()) / max(px.max() - px.min(), 1.0)
                levels = levels_for(*x.shape, manifest_levels(bundle.manifest))
                bands = join_details(wt.analysis(pad_plane(x, levels), levels))
                originals.append(x.ravel())
                for m in modes:
                    (y,) = run_signature(graph(m, levels), "synthesis", bands + [np.array([0.01], np.float32)])
                    decoded[m].append(y[0, :x.shape[0], :x.shape[1], 0].ravel())
        # The planes are normalized to [0, 1]: PSNR over range 1, pooled over the image's planes.
        flat = np.concatenate(originals)
        row = {"image": img_name,
               **{m: metrics.psnr(flat, np.concatenate(decoded[m]), data_range=1.0) for m in modes}}
        rows.append(row)
        progress(f"{img_name:36s} inverse DWT on exact coefficients: " +
                 ", ".join(f"{m} {row[m]:.1f} dB" for m in modes))
    return rows


def quantization_report(bundle_dir, exported_quant: str | None = None, qualities=(12, 17), folder=None,
                        progress=print) -> dict:
    """The export's --report: for float32, float16 and int8, the bpp and PSNR change of TFLite against
    Keras (:func:`test_split_report`); the BD-rate of int8 against float32 (:func:`bd_rate_report`);
    the bundle sizes; and the PSNR ceiling a quantized lifting transform would impose.

    `bundle_dir` holds one export (mode `exported_quant`, default its manifest's); the other
    modes are exported from it into a temporary folder.
    """
    bundle_dir = Path(bundle_dir)
    exported_quant = exported_quant or json.loads((bundle_dir / "manifest.json").read_text()).get(
        "tflite", {}).get("quantization")
    out = {"test_split": {}, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for mode in QUANT_MODES:
            if mode == exported_quant:
                dirs[mode] = bundle_dir
            else:
                progress(f"exporting {mode} for the comparison")
                dirs[mode] = Path(tmp) / mode
                export_transforms(bundle_dir, dirs[mode], quant=mode, progress=progress)
        for mode, d in dirs.items():
            progress(f"--- {mode}: TFLite against Keras on the test split")
            rows = test_split_report(d, qualities=qualities, folder=folder, progress=progress)
            db = np.array([r["psnr_tflite"] - r["psnr_keras"] for r in rows])
            dbpp = np.array([r["bpp_tflite"] - r["bpp_keras"] for r in rows])
            progress(f"{mode}: bpp change mean {dbpp.mean():+.5f} (max |{np.abs(dbpp).max():.5f}|), PSNR change "
                     f"mean {db.mean():+.3f} dB (min {db.min():+.3f}, max {db.max():+.3f}) over {len(rows)} codings")
            out["test_split"][mode] = rows
        progress("--- BD-rate of the int8 bundle against the float32 bundle (TFLite both), 40-55 dB")
        out["bd_rate_int8_vs_float32"] = bd_rate_report(dirs["float32"], dirs["int8"], folder=folder,
                                                        progress=progress)
        progress("--- bundle sizes (bytes)")
        for mode, d in dirs.items():
            sizes = bundle_sizes(d)
            out["sizes"][mode] = sizes
            progress(f"{mode}: " + ", ".join(f"{k} {v}" for k, v in sizes.items() if k != "total")
                     + f"; total {sizes['total']}")
    progress("--- the lifting synthesis quantized (why it stays float32)")
    out["transform_ceiling"] = transform_quantization_ceiling(bundle_dir, folder=folder, progress=progress)
    return out
