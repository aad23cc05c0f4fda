"""benchmarks/bench_lossless.py: one tiny image through the engine and every classical codec, and its tables."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench = pytest.importorskip("bench_lossless")


@pytest.fixture(scope="module")
def coder():
    from edge_runtime import exact_dwt
    from edge_runtime.bundle import default_bundle_path, load_bundle
    from edge_runtime.codec import PlaneCoder

    b = load_bundle(default_bundle_path())
    p = b.manifest["codec"]
    return b, PlaneCoder(p, b.coding, {n: exact_dwt.ExactTransforms(n, p["mode"]) for n in p["transforms"]},
                         b.residual, b.refine)


def test_rows_check_the_bound_and_tables_total_them(coder, tmp_path):
    from data.image import Image

    b, c = coder
    rng = np.random.default_rng(0)
    r, cc = np.mgrid[0:48, 0:40]
    px = (2000 + 300 * np.sin(r / 6.0) + 200 * np.cos(cc / 5.0) + rng.normal(0, 8, r.shape)).astype(np.uint16)
    image = Image(pixels=px[None, :, :, None], bits_stored=12, signed=False, modality="CT")
    rows = bench.measure("test", "a", image, c, b.model_id, (2,), tile=2048, progress=lambda *_: None)
    rows += bench.measure("test", "b", image, c, b.model_id, (2,), tile=2048, progress=lambda *_: None)
    got = {(r["image"], r["codec"], r["D"]): r for r in rows}
    for name in ("a", "b"):
        assert {k[1] for k in got if k[0] == name and k[2] == 0} == {"ours", "ours_fast", *bench.LOSSLESS}
        assert got[(name, "ours", 2)]["max_abs_err"] <= 2 and got[(name, "jpegls", 2)]["max_abs_err"] <= 2
        assert got[(name, "ours_fast", 2)]["max_abs_err"] <= 2
        assert got[(name, "ours", 0)]["n_bytes"] <= got[(name, "ours_fast", 0)]["n_bytes"]  # the full encode weighs it
        assert all(r["max_abs_err"] == 0 for k, r in got.items() if k[0] == name and k[2] == 0)
    text = bench.write(rows, (2,), tmp_path, "header")
    ours, jls = 2 * got[("a", "ours", 0)]["n_bytes"], 2 * got[("a", "jpegls", 0)]["n_bytes"]
    assert f"**{ours}**" in text and f"**{ours / jls:.3f}**" in text
    fast = 2 * got[("a", "ours_fast", 0)]["n_bytes"]
    assert f"ours --fast (every tile without a base): total {fast}, {fast / ours:.4f} x ours" in text
    assert (tmp_path / "lossless.csv").read_text().count("\n") == len(rows) + 1
    assert (tmp_path / "lossless.png").stat().st_size > 0
