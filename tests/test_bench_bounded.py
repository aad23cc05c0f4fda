"""The bench's near-lossless section: our max-error mode beside JPEG-LS NEAR = D, on tiny images."""
from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np

from data.image import Image
from keras_codec.evaluation.engine import OurCodec
from keras_codec.evaluation.bounded import BOUNDS, near_lossless_section


def _image(seed, rows, cols):
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:rows, 0:cols]
    x = 900 + 400 * np.sin(r / 7.0) * np.cos(c / 5.0) + rng.normal(0, 4, (rows, cols))
    return Image(pixels=np.clip(np.round(x), 0, 4095).astype(np.uint16)[None, :, :, None], bits_stored=12,
                 signed=False, modality="CT")


def test_section_measures_every_bound_against_jpegls(tmp_path):
    ctx = SimpleNamespace(models=[OurCodec()], sources=[("a", "a", _image(0, 48, 40)), ("b", "b", _image(1, 33, 61))],
                          out_dir=tmp_path, progress=lambda *_: None)
    text = near_lossless_section(ctx)
    rows = list(csv.DictReader(open(tmp_path / "bounded.csv")))
    ours = [r for r in rows if r["codec"] == "default"]
    assert sorted({int(r["D"]) for r in ours}) == list(BOUNDS) and len(ours) == 2 * len(BOUNDS)
    assert all(int(r["max_abs_err"]) <= int(r["D"]) for r in rows if r["codec"] in ("default", "jpegls"))
    assert {r["codec"] for r in rows} == {"default", "jpegls", "jpeg2000", "jpegxl"}
    assert (tmp_path / "bounded.png").stat().st_size > 1000
    assert "D=0 ours / JPEG-LS" in text and "**mean** (default)" in text
    # more freedom, fewer bits
    bpp = [float(next(r["bpp"] for r in ours if r["image"] == "a" and int(r["D"]) == d)) for d in BOUNDS]
    assert bpp == sorted(bpp, reverse=True)
