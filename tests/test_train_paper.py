"""`train_paper` on synthetic images, then real range coding of the paper latent (`eval_paper`)."""
import json
import os

import numpy as np
import pytest

from data.image import Image
from keras_codec.config import CodecConfig
from keras_codec.evaluation.paper import code_plane, decode_plane, evaluate_paper, paper_entropy_tables
from keras_codec.training.paper import load_paper, paper_stages, train_paper

CONFIG = CodecConfig(name="paper").replace(
    **{"paper.tile": 32, "paper.filters": (4, 8), "paper.dense_units": 32, "paper.latent_dim": 16,
       "train.batch_size": 4, "train.ssim_weight": 0.1})


def synthetic_image(rows=96, cols=80, seed=0, bits=12) -> Image:
    """A smooth gradient with blobs and a little noise, stored as 12-bit integers."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:rows, :cols] / max(rows, cols)
    v = 0.4 * x + 0.3 * y
    for _ in range(4):
        cy, cx, r = rng.random(3) * [1, 1, 0.2] + [0, 0, 0.05]
        v += 0.3 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / r ** 2)
    v += 0.01 * rng.standard_normal(v.shape)
    v = (v - v.min()) / (v.max() - v.min()) * ((1 << bits) - 1)
    return Image(pixels=np.rint(v).astype(np.uint16)[None, :, :, None], bits_stored=bits, signed=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("paper_run"))
    images = [synthetic_image(seed=s) for s in range(3)]
    res = train_paper(CONFIG, out, steps=6, progress=False, images=images, log_every=2, ckpt_every=3)
    return out, res


def test_stages():
    assert paper_stages(3000) == [("entropy", 200), ("joint", 2800)]
    assert paper_stages(6) == [("entropy", 0), ("joint", 6)]
    assert paper_stages(50) == [("entropy", 5), ("joint", 45)]


def test_train_paper_freezes_final(run):
    out, res = run
    assert res["step"] == 6 and np.isfinite(res["loss"]) and res["bits_per_tile"] > 0
    final = os.path.join(out, "final")
    assert os.path.exists(os.path.join(final, "weights.index"))
    assert os.path.exists(os.path.join(final, "tables.npz"))
    assert json.load(open(os.path.join(final, "summary.json")))["step"] == 6
    # Both the frozen weights and the latest checkpoint load, with the same tables.
    model_final, step_final = load_paper(out)
    model_ckpt, step_ckpt = load_paper(out, final=False)
    assert step_final == step_ckpt == 6
    a, b = model_final.entropy_tables(), model_ckpt.entropy_tables()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_real_coding_matches_estimate(run):
    out, _ = run
    model, _ = load_paper(out)
    tables = paper_entropy_tables(model.entropy_tables())
    img = synthetic_image(rows=70, cols=100, seed=7)  # not tile multiples: padded tiles
    stored = img.pixels[0, :, :, 0].astype(np.float64)
    plane = ((stored - stored.min()) / (stored.max() - stored.min())).astype(np.float32)
    coded = code_plane(model, tables, plane)
    symbols, decoded = decode_plane(model, tables, coded["data"], coded["grid"], coded["pad"])
    np.testing.assert_array_equal(symbols, coded["symbols"])
    assert decoded.shape == plane.shape
    real, est = 8 * len(coded["data"]), coded["est_bits"]
    assert abs(real - est) <= 0.05 * est + 8 * 64, (real, est)
    # Symbols far outside every table go through the escape code and still round-trip.
    wild = coded["symbols"].copy()
    wild[0, :3] = [500, -700, 12345]
    from edge_runtime.entropy import Encoder
    from keras_codec.evaluation.paper import _indices

    enc = Encoder(tables.tables)
    enc.encode((wild.astype(np.int64) - tables.centres).ravel(), _indices(*wild.shape))
    back, _ = decode_plane(model, tables, enc.getvalue(), coded["grid"], coded["pad"])
    np.testing.assert_array_equal(back, wild)


def test_evaluate_paper_on_folder(run, tmp_path):
    from data.writers import write_png

    out, _ = run
    folder = tmp_path / "images"
    folder.mkdir()
    pixels = (synthetic_image(rows=64, cols=72, seed=3).pixels >> 4).astype(np.uint8)
    write_png(folder / "a.png", Image(pixels=pixels, bits_stored=8, signed=False))
    res = evaluate_paper(out, out_dir=str(tmp_path / "eval"), folder=str(folder), progress=None)
    (row,) = res["rows"]
    assert row["bpp"] > 0 and np.isfinite(row["psnr"]) and 0 < row["cr"]
    assert 0.9 < row["bits_ratio"] < 1.1 or row["n_bytes"] < 200
    assert (tmp_path / "eval" / "eval_paper.csv").exists()
    assert "seed paper's claim" in (tmp_path / "eval" / "eval_paper.md").read_text()
