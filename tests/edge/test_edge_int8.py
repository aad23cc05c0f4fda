"""The int8 post-filter's float boundary on the edge (numpy, no TensorFlow): the integers fed to
postfilter.tflite, the log-step channel, the dequantized correction, and bundles that lack the graph.

The graph itself (full-integer, bit-identical between XNNPACK and the reference kernels) is made
and tested on the workstation: tests/test_export.py::test_int8_postfilter_export_is_integer_and_deterministic.
"""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from edge_runtime.bundle import InvalidBundleError, load_bundle
from edge_runtime.codec import QUALITY_LEVELS, quantizer_step
from edge_runtime.tflite_runner import (MissingTFLiteError, log_step_code, postfilter_input, postfilter_output,
                                        postfilter_spec, transforms_for_bundle)

SPEC = {"transform": "cdf97", "diff_scale": 2.0 ** -5, "log_step_gain": 120.0,
        "log_step_offset": (math.log10(quantizer_step(QUALITY_LEVELS[0]))
                            + math.log10(quantizer_step(QUALITY_LEVELS[-1]))) / 2}


def test_input_is_the_rounded_saturated_differences_of_plane_over_step():
    rng = np.random.default_rng(0)
    step = quantizer_step(9)
    plane = (0.4 + 0.02 * rng.standard_normal((8, 12))).astype(np.float32)
    q = postfilter_input(plane, step, SPEC)
    assert q.shape == (1, 10, 14, 3) and q.dtype == np.int8
    uz = np.pad(plane.astype(np.float64) / step, ((1, 2), (1, 2)))  # one zero before, two after each axis
    for ch, d in enumerate((uz[:-1, 1:] - uz[:-1, :-1], uz[1:, :-1] - uz[:-1, :-1])):
        expected = np.clip(np.rint(d / SPEC["diff_scale"]), -128, 127)
        assert np.abs(q[0, :, :, ch] - expected).max() <= 1  # float32 vs float64 rounding at ties only
        assert (q[0, :, :, ch] == expected).mean() > 0.99
    # The zero padding is a cliff of height u at the border: saturated (0.4 / step >> 4 steps).
    assert q[0, 0, 1, 1] == 127 and q[0, 1, 0, 0] == 127 and q[0, 1, -2, 0] == -128 and q[0, 1, -1, 0] == 0
    assert np.all(q[0, :, :, 2] == log_step_code(step, SPEC))


def test_rounding_is_half_to_even_then_saturation():
    # Differences of exactly 2.5, 3.5 and -0.5 input steps (1/32 quantizer step each), then far out.
    step = 1.0
    row = np.cumsum([0.0, 2.5, 3.5, -0.5, 200.0, -300.0]) / 32
    q = postfilter_input(row[None, :].astype(np.float32), step, SPEC)
    assert list(q[0, 1, 1:6, 0]) == [2, 4, 0, 127, -128]


def test_quality_steps_land_on_integers_of_the_log_step_channel():
    codes = [log_step_code(quantizer_step(q), SPEC) for q in QUALITY_LEVELS]
    assert codes == [138 - 12 * q for q in QUALITY_LEVELS]  # 126 .. -126: no rounding, no saturation
    for q in QUALITY_LEVELS:
        v = (math.log10(quantizer_step(q)) - SPEC["log_step_offset"]) * SPEC["log_step_gain"]
        assert abs(v - round(v)) < 1e-9
    assert log_step_code(1e-9, SPEC) == -128 and log_step_code(1e9, SPEC) == 127


def test_output_adds_step_times_dequantized_correction_in_float32():
    plane = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    corr = np.array([[-128, -3, 0, 5], [127, 1, 2, 3], [0, 0, 0, -1]], np.int8)
    out = postfilter_output(plane, 0.01, corr, scale=0.005, zero_point=-3)
    assert out.dtype == np.float32
    expected = plane + np.float32(0.01) * ((corr.astype(np.float32) + 3) * np.float32(0.005))
    np.testing.assert_array_equal(out, expected)


def _int8_manifest(bundle_path, tmp_path, **entry):
    for f in bundle_path.iterdir():
        shutil.copy(f, tmp_path / f.name)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["tflite"]["postfilter_int8"] = {**SPEC, "file": "postfilter.tflite", **entry}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return load_bundle(tmp_path)


def test_int8_bundle_without_its_graph_says_to_export(bundle_path, tmp_path):
    bundle = _int8_manifest(bundle_path, tmp_path)
    assert postfilter_spec(bundle)["transform"] == "cdf97"
    with pytest.raises(MissingTFLiteError, match="postfilter.tflite.*export"):
        transforms_for_bundle(bundle)


def test_int8_entry_missing_fields_is_a_bad_bundle(bundle_path, tmp_path):
    bundle = _int8_manifest(bundle_path, tmp_path)
    del bundle.manifest["tflite"]["postfilter_int8"]["diff_scale"]
    with pytest.raises(InvalidBundleError, match="diff_scale"):
        postfilter_spec(bundle)


def test_float_bundle_has_no_int8_postfilter(bundle_path):
    bundle = load_bundle(bundle_path)
    assert postfilter_spec(bundle) is None
    assert all(t.postfilter is None for t in transforms_for_bundle(bundle).values())


def test_postfilter_in_strips_is_the_same_bits():
    """Running the int8 post-filter strip by strip (bounded memory) gives exactly the one-run result."""
    from edge_runtime.runtime import load_codec

    _, coder = load_codec(None)  # the shipped bundle: int8 post-filter
    pf = coder.transforms["cdf97"].postfilter
    rng = np.random.default_rng(0)
    r, c = np.mgrid[0:70, 0:45]
    plane = (0.5 + 0.3 * np.sin(r / 7.0) * np.cos(c / 5.0) + rng.normal(0, 0.01, r.shape)).astype(np.float32)
    for step in (0.002, 0.03):
        full = pf(plane, step, strip=10 ** 6)
        for strip in (1, 9, 32):
            np.testing.assert_array_equal(pf(plane, step, strip=strip), full)


def test_postfilter_strips_default_and_reach(monkeypatch):
    """By default, planes taller than POSTFILTER_STRIP rows run in strips of that many rows, each with the rows the
    graph's convolutions reach on either side (three 3x3 layers: 3); the same bits as one run, on one thread or two."""
    from edge_runtime import tflite_runner
    from edge_runtime.runtime import load_codec

    monkeypatch.setattr(tflite_runner, "POSTFILTER_STRIP", 16)
    runs = []
    call = tflite_runner._Signature.__call__
    monkeypatch.setattr(tflite_runner._Signature, "__call__",
                        lambda self, feed: runs.append(next(iter(feed.values())).shape[1]) or call(self, feed))
    rng = np.random.default_rng(1)
    one = load_codec(None, num_threads=1)[1].transforms["cdf97"].postfilter  # as a worker's
    two = load_codec(None)[1].transforms["cdf97"].postfilter
    assert (one.num_threads, two.num_threads) == (1, 2)
    for rows, n_runs in ((16, 1), (17, 2), (49, 4)):
        plane = rng.uniform(0.2, 0.8, (rows, 40)).astype(np.float32)
        for pf in (one, two):
            runs.clear()
            whole = pf(plane, 0.03, strip=10 ** 6)
            assert runs == [rows + 2]
            runs.clear()
            np.testing.assert_array_equal(pf(plane, 0.03), whole)
            window = min(rows, 16 + 2 * 3)
            assert runs == [window + 2] * n_runs, (rows, pf.num_threads)
    assert one._halo == two._halo == 3


def test_postfilter_reach_is_read_from_the_graph():
    """Three 3x3 convolutions reach 3 rows; a graph with an op that may look further gets the generous bound."""
    import types

    from edge_runtime import tflite_runner
    from edge_runtime.bundle import default_bundle_path

    path = str(default_bundle_path() / tflite_runner.POSTFILTER_FILE)
    mod = tflite_runner.interpreter_module()
    assert tflite_runner._reach_rows(path, mod) == 3

    class WithPooling(mod.Interpreter):
        def _get_ops_details(self):
            return super()._get_ops_details() + [{"op_name": "MAX_POOL_2D", "inputs": [0], "outputs": [0]}]

    fake = types.SimpleNamespace(Interpreter=WithPooling, OpResolverType=mod.OpResolverType)
    assert tflite_runner._reach_rows(path, fake) == tflite_runner.POSTFILTER_HALO > 3
