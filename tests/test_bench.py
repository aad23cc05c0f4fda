"""The evaluation engine and its presets (`keras-codec bench`, `keras-codec demo`): tiny images, the shipped bundle."""
from __future__ import annotations

import contextlib
import csv
import io
import math

import numpy as np
import pytest

from data.image import Image
from data.writers import write_png
from keras_codec.evaluation import bench, engine
from keras_codec.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
POINT_COLUMNS = {"image", "modality", "codec", "model", "quality", "param", "n_bytes", "bpp", "psnr",
                 "psnr_bitdepth", "ssim", "max_abs_err", "cr", "reduction", "encode_s", "decode_s"}


def _folder(root):
    """Two tiny synthetic images (16-bit gray, 8-bit RGB) and a file that is not an image."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:64]
    gray = np.clip(30000 + 20000 * np.sin(x / 9.0) * np.cos(y / 6.0) + rng.normal(0, 200, x.shape), 0, 65535)
    rgb = np.stack([np.clip(128 + 100 * np.sin(x / 7.0 + k) + rng.normal(0, 4, x.shape), 0, 255) for k in range(3)], -1)
    root.mkdir()
    write_png(root / "gray.png", Image(pixels=gray.astype(np.uint16)[None, :, :, None], bits_stored=16, signed=False))
    write_png(root / "rgb.png", Image(pixels=rgb.astype(np.uint8)[None], bits_stored=8, signed=False,
                                      photometric="RGB"))
    (root / "broken.png").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """`keras-codec bench --dir` once on the tiny folder: (out folder, printed text)."""
    tmp = tmp_path_factory.mktemp("bench")
    src, out = _folder(tmp / "in"), tmp / "out"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["bench", "--dir", str(src), "--out", str(out)])
    assert code == 0
    return out, buf.getvalue()


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_bench_writes_points_csv_with_every_codec(bench_run):
    out, _ = bench_run
    rows = _csv(out / "points.csv")
    assert POINT_COLUMNS <= set(rows[0])
    for image in ("gray.png", "rgb.png"):
        codecs = {r["codec"] for r in rows if r["image"] == image}
        assert codecs == {"keras_codec", "jpeg2000", "jpegxl", "jpegls"}
        ours = [r for r in rows if r["image"] == image and r["codec"] == "keras_codec"]
        # every level that lands in the bench window, plus at most one beyond each end
        inside = [float(r["psnr"]) for r in ours if 38.0 <= float(r["psnr"]) <= 57.0]
        assert len(inside) >= 5 and len(ours) <= len(inside) + 2
        assert all(r["model"] == "default" for r in ours)


def test_bench_reports_bd_rate_against_each_classical_codec(bench_run):
    out, printed = bench_run
    bd = _csv(out / "bd_rate.csv")
    assert {(r["image"], r["anchor"]) for r in bd} == {(i, c) for i in ("gray.png", "rgb.png")
                                                       for c in ("jpeg2000", "jpegxl", "jpegls")}
    assert all(math.isfinite(float(r["bd_rate"])) for r in bd)
    md = (out / "results.md").read_text()
    assert "| image | modality | model | levels (PSNR) | vs JPEG 2000 | vs JPEG XL | vs JPEG-LS |" in md
    for image in ("gray.png", "rgb.png"):
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {image} | OT | default |"))
        assert line.count(" %") == 3
        assert f"{image} [default]: BD-rate (40-55 dB) vs JPEG 2000 " in printed
    assert "**mean of 2 images**" in md and "## Lossless (classical codecs)" in md
    assert "## Speed" not in md  # only with --speed
    lossless = _csv(out / "lossless.csv")
    assert [r["image"] for r in lossless] == ["gray.png", "rgb.png"]
    assert all(float(r[c]) > 0 for r in lossless for c in ("jpegls", "jpeg2000", "jpegxl"))


def test_bench_writes_rd_pngs_per_image_and_modality(bench_run):
    out, _ = bench_run
    for name in ("rd_gray.png", "rd_rgb.png", "rd_modality_OT.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_bench_reports_and_skips_a_bad_file(bench_run):
    out, printed = bench_run
    assert "broken.png: failed to read, skipped" in printed
    assert all(r["image"] != "broken.png" for r in _csv(out / "points.csv"))
    assert "(2 read)" in (out / "results.md").read_text()


def test_paper_marker_is_computed_from_the_containers_bits():
    assert engine.paper_point(16) == {"bpp": pytest.approx(5.12), "psnr": 46.0, "ssim": 0.91}
    assert engine.paper_point(8)["bpp"] == pytest.approx(2.56)
    with pytest.raises(ValueError, match="bits_allocated"):
        engine.paper_point(12)
    # a 12-bit image stored in 16-bit words: 68 % smaller than its 16 stored bits per sample
    res = engine.ImageResult(name="ct", path="", modality="CT", geometry="8x8", bits_stored=12, bits_allocated=16)
    _, _, markers = engine.image_panel(res)
    assert [(bpp, psnr) for _, bpp, psnr in markers] == [(pytest.approx(0.32 * 16), 46.0)]


def test_custom_sections_join_the_report(tmp_path):
    src = _folder(tmp_path / "in")
    seen = []

    def near_lossless(ctx):
        seen.append([name for name, _, _ in ctx.sources])
        return "placeholder"

    res = bench.run_bench(folder=src, out_dir=tmp_path / "out", sections=[("Near-lossless", near_lossless)],
                          progress=lambda s: None)
    assert seen == [["gray.png", "rgb.png"]]
    assert "## Near-lossless\n\nplaceholder" in res["markdown"]
    assert [title for title, _ in bench.SECTIONS] == ["Rate-distortion", "Lossless (classical codecs)",
                                                      "Near-lossless and lossless (ours, max error D)", "Speed"]


def test_demo_prints_one_table_per_image_and_writes_files(tmp_path, capsys):
    src, out = _folder(tmp_path / "in"), tmp_path / "out"
    assert main(["demo", "--dir", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for stem in ("gray", "rgb"):
        assert f"{stem}.png (OT, " in printed
        for suffix in (".kcd", ".dcm"):
            assert (out / f"{stem}{suffix}").stat().st_size > 0
        for suffix in ("_rd.png", "_error.png"):
            assert (out / f"{stem}{suffix}").read_bytes()[:8] == PNG_MAGIC
    assert printed.count("JPEG 2000   JPEG XL   JPEG-LS | smallest") == 2
    assert printed.count(" 17*") == 2  # the default quality, written to files and verified
    assert "broken.png: failed to read, skipped" in printed
    summary = printed[printed.index("BD-rate of ours over 40-55 dB"):]
    assert "gray.png" in summary and "rgb.png" in summary and "mean" in summary


def test_walk_covers_the_window_and_brackets_it():
    calls = []

    def measure(q):
        calls.append(q)
        return {"quality": q, "psnr": 12.0 + 2.0 * q}

    rows = engine.walk_levels(measure, range(1, 23), start=17, window=(40.0, 55.0))
    assert [r["quality"] for r in rows] == list(range(13, 23))  # 38 .. 56 dB: one level beyond each end
    calls.clear()
    rows = engine.walk_levels(measure, range(1, 23), start=17, window=(40.0, 55.0), spacing=4.0)
    # first stride from the 1.25 dB/level prior (3 levels), then from the measured 2 dB/level (2 levels)
    assert [r["quality"] for r in rows] == [12, 14, 17, 20, 22]
    assert sorted(calls) == [12, 14, 17, 20, 22]  # each level measured once
    assert len(engine.walk_levels(measure, [3, 5])) == 2  # no window: every level


def test_pareto_interpolation_and_bd_rate():
    curve = [{"bpp": b, "psnr": p} for b, p in ((0.1, 40.0), (0.2, 45.0), (0.4, 50.0), (0.8, 55.0))]
    noisy = curve + [{"bpp": 0.3, "psnr": 44.0}, {"bpp": 1.0, "psnr": math.inf}]
    assert engine.pareto(noisy) == curve
    assert engine.bpp_at(noisy, 45.0) == pytest.approx(0.2)
    assert engine.bpp_at(curve, 47.5) == pytest.approx(0.2 * math.sqrt(2.0))  # log-linear between nodes here
    assert math.isnan(engine.bpp_at(curve, 39.0)) and math.isnan(engine.bpp_at(curve, 56.0))
    half = [{"bpp": r["bpp"] / 2, "psnr": r["psnr"]} for r in curve]
    assert engine.bd_rate(half, curve) == pytest.approx(-50.0)
    assert engine.bd_rate(curve, curve) == pytest.approx(0.0)
    assert engine.bd_overlap(half, curve[:2]) == pytest.approx(5.0)


def test_classical_codec_that_cannot_take_an_image_is_a_note():
    px = (np.arange(24 * 32, dtype=np.int64).reshape(1, 24, 32, 1) % 200 - 100).astype(np.int8)
    image = Image(pixels=px, bits_stored=8, signed=True, modality="OT")
    notes = []
    res = engine.compare_image("tiny_int8", image, [], engine.classical_codecs(), progress=notes.append)
    assert res.classical == {} and len(res.notes) == 3
    assert all("left out" in n and "uint8, uint16 or int16" in n for n in res.notes)


def test_only_picks_sections(tmp_path, capsys):
    src = _folder(tmp_path / "in")
    assert main(["bench", "--only", "nope", "--dir", str(src), "--out", str(tmp_path / "x")]) == 1
    assert "unknown section nope" in capsys.readouterr().err
    assert main(["bench", "--only", "lossless", "--dir", str(src), "--out", str(tmp_path / "o")]) == 0
    text = (tmp_path / "o" / "results.md").read_text()
    assert "## Lossless (classical codecs)" in text and "## Rate-distortion" not in text


def test_layers_import_one_way():
    """metrics <- baselines <- engine <- presets: no module imports a layer above its own."""
    import ast
    from pathlib import Path

    import keras_codec.evaluation as evaluation

    layers = {"metrics": 0, "baselines": 1, "speed": 2, "engine": 2, "bounded": 3, "bench": 4, "evaluate": 3,
              "demo": 3, "paper": 3}
    folder = Path(evaluation.__file__).parent
    for name, level in layers.items():
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "keras_codec.evaluation":
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras_codec.evaluation."):
                imported.add(node.module.rsplit(".", 1)[1])
        above = sorted(m for m in imported if layers[m] >= level and m != name)
        assert not above, f"{name} imports {above}"
