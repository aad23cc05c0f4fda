"""`keras-codec train` on the user's own folders: the data split, the recipe, the pipeline end to end
(train -> bundle -> edge-codec with --bundle), resume, refusals, install-bundle, and the training
context features against the edge's."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from _train_data import make_folder, write_png
from keras_codec.training import data as tdata
from keras_codec.training.recipe import (ContextFit, Export, PostFilter, Recipe, Refine, Residual, load_recipe,
                                         named_recipe)

SHIPPED = Path("edge_runtime/models/default")
QUALITIES = (6, 14, 20)
_PF = dict(batch_size=2, patch_size=32, channels=4, layers=2, measure_gain=False)


def tiny_recipe() -> Recipe:
    """The default recipe's stages, scaled down to seconds: 2 wavelet levels, a few steps each."""
    from keras_codec.config import CodecConfig

    return Recipe(
        name="tiny", config=CodecConfig().replace(**{"wavelet.levels": 2}), val_fraction=0.3,
        stages=(ContextFit(max_side=64, max_frames=1, qualities=QUALITIES), PostFilter(steps=3, **_PF), Export(),
                Residual(max_side=32),
                Refine(steps=3, batch_size=2, patch_size=32, channels=2, layers=2, context_hidden=2,
                       refit_max_side=64, refit_max_frames=1, refit_qualities=QUALITIES),
                PostFilter(steps=2, learning_rate=3e-4, init_from_bundle=True, **_PF), Export(),
                Residual(max_side=32)),
        report_qualities=(8, 14, 20))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("own") / "images")


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.json"
    path.write_text(tiny_recipe().to_json())
    return path


@pytest.fixture(scope="module")
def run(images, recipe_file, tmp_path_factory):
    """One uninterrupted run through the CLI."""
    from keras_codec.cli import main

    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--data", str(images), "--out", str(out), "--recipe", str(recipe_file)]) == 0
    return out


# --- data ---------------------------------------------------------------------------------------------


def test_validation_split_holds_out_whole_patients_deterministically(images):
    d = tdata.prepare([images], val_fraction=0.3, seed=0)
    train_groups, val_groups = {e.group for e in d.train}, {e.group for e in d.val}
    assert not train_groups & val_groups and val_groups
    assert {e.group for e in d.train + d.val} == {"patient:P1", "patient:P2", "file:photos/a.png",
                                                  "file:photos/b.png"}
    for e in d.train + d.val:  # a patient's slices stay together
        if e.group.startswith("patient:"):
            assert e.name.startswith(f"ct/{e.group.split(':')[1]}/")
    again = tdata.prepare([images], val_fraction=0.3, seed=0)
    assert [e.name for e in again.val] == [e.name for e in d.val] and again.fingerprint == d.fingerprint
    by_file = tdata.prepare([images], val_fraction=0.3, seed=0, split_by="file")
    assert all(e.group == f"file:{e.name}" for e in by_file.train + by_file.val)


def test_one_patient_cannot_be_split_by_patient(tmp_path):
    from _train_data import write_series

    write_series(tmp_path / "P1", 1)
    with pytest.raises(ValueError, match="single group .*--split-by file"):
        tdata.prepare([tmp_path], val_fraction=0.3, seed=0)
    d = tdata.prepare([tmp_path], val_fraction=0.3, seed=0, split_by="file")
    assert len(d.train) == 2 and len(d.val) == 1


def test_nifti_volumes_give_their_slices(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    vol = rng.integers(-1000, 3000, (20, 24, 3)).astype(np.int16)  # x, y, z
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "ct.nii.gz")
    fvol = rng.random((16, 16, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(fvol, np.eye(4)), tmp_path / "mr.nii")
    write_png(tmp_path / "x.png", 0)
    (tmp_path / "notes.dcm").write_bytes(b"not an image")
    lines = []
    ex = {e.name: e for e in tdata.collect([tmp_path], split_by="file", progress=lines.append)}
    assert sorted(ex) == ["ct.nii.gz", "mr.nii", "x.png"]
    assert any(s.startswith("data: skipped notes.dcm: ") for s in lines)
    ct = ex["ct.nii.gz"].image
    assert ct.pixels.shape == (3, 24, 20, 1) and ct.signed and ct.pixels.dtype == np.int16
    assert np.array_equal(ct.pixels[1, :, :, 0], vol[:, :, 1].T)
    mr = ex["mr.nii"].image
    assert mr.pixels.dtype == np.uint16 and mr.pixels.min() == 0 and mr.pixels.max() == 65535
    lin = (fvol - fvol.min()) / (fvol.max() - fvol.min()) * 65535
    assert np.abs(mr.pixels[:, :, :, 0].astype(np.float64) - np.transpose(lin, (2, 1, 0))).max() <= 0.5 + 1e-3


# --- recipe -------------------------------------------------------------------------------------------


def test_default_recipe_is_the_shipped_bundles(tmp_path):
    """The hyper-parameters of the `default` stages are those the shipped manifest records."""
    m = json.loads((SHIPPED / "manifest.json").read_text())
    r = named_recipe("default")
    assert [s.kind for s in r.stages] == ["context_fit", "postfilter", "export", "residual", "refine",
                                          "postfilter", "export", "residual"]
    fit, pf1, ex1, res1, ref, pf2, ex2, _ = r.stages
    assert list(fit.qualities) == m["training"]["fit_qualities"]
    assert fit.learned_tables == m["training"]["learned_tables"]
    assert "--steps 9000" in m["postfilter"]["initialized_from"] and pf1.steps == 9000
    assert "--lr 0.001" in m["postfilter"]["initialized_from"] and pf1.learning_rate == 1e-3
    for key in ("steps", "batch_size", "learning_rate", "patch_size"):
        assert getattr(pf2, key) == m["postfilter"][key] and getattr(ref, key) == m["refine"][key]
    assert pf2.init_from_bundle and (pf1.channels, pf1.layers) == (12, 3) == (pf2.channels, pf2.layers)
    assert ref.channels == m["refine"]["channels"] and ref.context_hidden == m["refine"]["context_hidden"]
    assert list(ref.refit_qualities) == m["training"]["refit_after_refine"]["fit_qualities"]
    assert ex1.quant == ex2.quant == m["tflite"]["quantization"] and res1.max_side == m["residual"]["max_side"]
    quick = named_recipe("quick")
    assert [s.kind for s in quick.stages] == [s.kind for s in r.stages]
    assert all(q.steps < d.steps for q, d in zip(quick.stages, r.stages) if hasattr(d, "steps"))


def test_recipe_json_round_trip_and_file_override(tmp_path):
    r = tiny_recipe()
    assert Recipe.from_json(r.to_json()) == r and Recipe.from_json(r.to_json()).digest() == r.digest()
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"base": "quick", "seed": 3, "split_by": "file"}))
    mine = load_recipe(str(path))
    assert mine.seed == 3 and mine.split_by == "file" and mine.stages == named_recipe("quick").stages
    assert mine.name == "quick+mine" and mine.digest() != named_recipe("quick").digest()
    path.write_text(json.dumps({"base": "quick", "stages": [{"kind": "export", "quantum": 1}]}))
    with pytest.raises(ValueError, match="unknown keys \\['quantum'\\]"):
        load_recipe(str(path))
    with pytest.raises(ValueError, match="a postfilter stage needs steps >= 1, got 0"):
        Recipe(stages=(PostFilter(steps=0),))
    with pytest.raises(ValueError, match="recipe 'fast': neither a named recipe \\(default, quick\\) nor a JSON file"):
        load_recipe("fast")


# --- the pipeline -------------------------------------------------------------------------------------


def test_run_writes_a_bundle_the_edge_codes_with(run, tmp_path):
    from data.readers import read_image
    from edge_runtime.bundle import load_bundle
    from edge_runtime.cli import main as edge
    from keras_codec.evaluation import metrics

    bundle = load_bundle(run / "bundle")
    m = bundle.manifest
    training = m["training"]
    assert training["recipe"] == tiny_recipe().to_dict() and training["recipe_digest"] == tiny_recipe().digest()
    data = json.loads((run / "data.json").read_text())
    assert training["data"]["fingerprint"] == data["fingerprint"]
    assert "command" not in json.dumps(m) and "wall_seconds" not in json.dumps(m)
    assert {"refine", "postfilter", "residual", "tflite"} <= set(m) and m["tflite"]["quantization"] == "int8"
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["model_id"] == bundle.model_id.hex() and np.isfinite(report["mean_bd_rate_vs_jpeg2000"])
    assert (run / "report" / "rd_curves.png").stat().st_size > 0 and (run / "report" / "eval.csv").is_file()

    val = [r["name"] for r in data["val"]]
    src = Path(data["source"]) / next(n for n in val if n.endswith(".dcm") or n.endswith(".png"))
    kcd, out = tmp_path / "x.kcd", tmp_path / ("y" + src.suffix)
    assert edge(["encode", str(src), str(kcd), "--quality", "16", "--bundle", str(run / "bundle")]) == 0
    assert edge(["decode", str(kcd), str(out), "--bundle", str(run / "bundle")]) == 0
    a, b = read_image(src).pixels, read_image(out).pixels
    assert a.shape == b.shape and metrics.psnr(a, b) > 40.0
    # the shipped bundle does not hold this model: it refuses the stream
    assert edge(["decode", str(kcd), str(tmp_path / ("z" + src.suffix))]) != 0


def test_validation_images_are_never_trained_on(run):
    data = json.loads((run / "data.json").read_text())
    val = {r["name"] for r in data["val"]}
    train = {r["name"] for r in data["train"]}
    assert val and train and not val & train
    assert not {r["group"] for r in data["val"]} & {r["group"] for r in data["train"]}
    m = json.loads((run / "bundle" / "manifest.json").read_text())
    fitted = m["training"]["planes"] + m["residual"]["planes"]
    assert fitted and all(p.split("[")[0] in train for p in fitted)
    assert m["training"]["data"]["val_images"] == len(val)


def test_interrupted_run_resumes_to_the_same_bundle_bytes(run, images, tmp_path):
    from keras_codec.training.pipeline import run_recipe

    class Stop(Exception):
        pass

    def stop_after_refine(stage_id):
        if stage_id == "05_refine":
            raise Stop

    recipe = tiny_recipe()
    data = tdata.prepare([images], val_fraction=recipe.val_fraction, seed=recipe.seed)
    out = tmp_path / "run"
    with pytest.raises(Stop):
        run_recipe(recipe, data, out, after_stage=stop_after_refine, progress=lambda s: None)
    state = json.loads((out / "state.json").read_text())
    assert list(state["done"]) == ["01_context_fit", "02_postfilter", "03_export", "04_residual", "05_refine"]
    assert not (out / "bundle").exists()
    lines = []
    res = run_recipe(recipe, data, out, progress=lines.append, report=False)
    assert sum("done earlier" in s for s in lines) == 5 and any(s.startswith("[6/8] 06_postfilter: started")
                                                               for s in lines)
    files = sorted(p.name for p in (run / "bundle").iterdir())
    assert files == sorted(p.name for p in (out / "bundle").iterdir())
    for name in files:
        assert (out / "bundle" / name).read_bytes() == (run / "bundle" / name).read_bytes(), name
    assert res["model_id"] == json.loads((run / "state.json").read_text())["bundle"]


def test_a_rerun_with_another_recipe_or_other_images_is_refused(run, images, recipe_file, tmp_path, capsys):
    from keras_codec.cli import main

    before = (run / "state.json").read_text()
    other = tmp_path / "other.json"
    other.write_text(tiny_recipe().replace(seed=1).to_json())
    assert main(["train", "--data", str(images), "--out", str(run), "--recipe", str(other)]) == 1
    err = capsys.readouterr().err
    assert "holds a run made with another recipe (differs in seed" in err and "new --out" in err
    more = tmp_path / "more"
    shutil.copytree(images, more)
    write_png(more / "photos" / "c.png", 3)
    assert main(["train", "--data", str(more), "--out", str(run), "--recipe", str(recipe_file)]) == 1
    assert "other images (data fingerprint" in capsys.readouterr().err
    assert (run / "state.json").read_text() == before


def test_install_bundle_copies_a_run_and_keeps_an_existing_one_without_force(run, tmp_path, capsys):
    from edge_runtime.bundle import model_id_of
    from keras_codec.cli import main

    dest = tmp_path / "models" / "default"
    assert main(["install-bundle", str(run), "--to", str(dest)]) == 0
    assert model_id_of(dest) == model_id_of(run / "bundle")
    (dest / "marker").write_text("old")
    assert main(["install-bundle", str(run), "--to", str(dest)]) == 1
    assert "--force" in capsys.readouterr().err and (dest / "marker").exists()
    assert main(["install-bundle", str(run), "--to", str(dest), "--force"]) == 0
    assert not (dest / "marker").exists() and model_id_of(dest) == model_id_of(run / "bundle")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["default"]  # the same model: nothing to keep


def test_install_bundle_keeps_the_replaced_model_so_its_streams_decode(run, tmp_path, capsys, monkeypatch):
    """A new default installed over an older one: the older is kept beside it, and the default decoder still
    decodes the streams it wrote (edge_runtime.bundle.shipped_bundle_for); --drop-previous deletes it instead."""
    from edge_runtime import bundle as bundle_mod
    from edge_runtime import runtime
    from edge_runtime.bundle import model_id_of
    from keras_codec.cli import main

    later = tmp_path / "later"
    shutil.copytree(run / "bundle", later / "bundle")
    manifest = json.loads((later / "bundle" / "manifest.json").read_text())
    manifest["release_note"] = "a later model"
    (later / "bundle" / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    models = tmp_path / "models"
    dest = models / "default"
    assert main(["install-bundle", str(run), "--to", str(dest)]) == 0
    first = model_id_of(dest)
    monkeypatch.setattr(bundle_mod, "MODELS_DIR", models)
    stream = tmp_path / "old.kcd"
    runtime.encode_file(write_png(tmp_path / "a.png", 5), stream, quality=12)
    capsys.readouterr()
    assert main(["install-bundle", str(later), "--to", str(dest), "--force"]) == 0
    kept = models / f"default-{first.hex()[:12]}"
    assert str(kept) in capsys.readouterr().out
    assert model_id_of(kept) == first and model_id_of(dest) == model_id_of(later / "bundle") != first
    runtime.decode_file(stream, tmp_path / "old.png")  # the new default hands it to the kept one
    with pytest.raises(ValueError, match="made by model"):
        runtime.decode_file(stream, tmp_path / "x.png", bundle=dest)
    shutil.rmtree(kept)
    assert main(["install-bundle", str(run), "--to", str(dest), "--force", "--drop-previous"]) == 0
    assert sorted(p.name for p in models.iterdir()) == ["default"]


# --- training features = edge features -----------------------------------------------------------------


@pytest.mark.parametrize("n_sib", [0, 1, 2])
@pytest.mark.parametrize("with_parent", [False, True])
def test_training_context_features_are_the_edges(n_sib, with_parent):
    """keras_codec.training.refine.context_features (TensorFlow, what the refinement is trained with) gives,
    at every position of every polyphase pass, the integers edge_runtime.context.detail_features gives."""
    import tensorflow as tf

    from edge_runtime import context as ctx
    from keras_codec.training.refine import _codes, context_features

    rng = np.random.default_rng(10 * n_sib + with_parent)
    shape = (16, 24)
    band = rng.integers(-5000, 5000, shape) * (rng.random(shape) < 0.6)
    band[0, :5] = [1, 2, 3, 7, 65535]  # small codes and one at the clip of the float path's range
    parent = (rng.integers(-400, 400, (8, 12)) * (rng.random((8, 12)) < 0.5)) if with_parent else None
    sib = [rng.integers(-300, 300, shape) for _ in range(n_sib)]

    def t(a):
        return tf.constant(a[None].astype(np.float32))

    f, p0, p1 = context_features(_codes(t(band)), None if parent is None else _codes(t(parent)),
                                 [_codes(t(s)) for s in sib])
    f = f.numpy()[0]
    known = np.zeros(shape, bool)
    for phase, mask in enumerate(ctx.phase_masks(shape)):
        want = ctx.detail_features(band, phase, known, parent, sib)
        assert np.array_equal(f[mask].astype(np.int64), want), phase
        known |= mask
    assert np.array_equal(p0.numpy()[0], ctx.phase_masks(shape)[0])


# --- distribution ----------------------------------------------------------------------------------------


def test_dataset_under_a_strategy_batches_each_replicas_share_and_draws_per_pipeline(images):
    """make_dataset(input_context=...): the global batch split over replicas; pipeline 0 draws the patches
    of a run without a strategy, pipeline 1 others."""
    import tensorflow as tf

    from data.pipeline import make_dataset

    imgs = [e.image for e in tdata.collect([images])]
    plain = next(iter(make_dataset(imgs, patch_size=16, batch_size=2, seed=5)))
    ctx = [tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=k, num_replicas_in_sync=2)
           for k in range(2)]
    first, second = (next(iter(make_dataset(imgs, patch_size=16, batch_size=4, seed=5, input_context=c)))
                     for c in ctx)
    assert first.shape == second.shape == (2, 16, 16, 1)
    assert np.array_equal(first.numpy(), plain.numpy()) and not np.array_equal(first.numpy(), second.numpy())


def test_a_multi_worker_strategy_is_refused_before_any_work(images, tmp_path):
    from keras_codec.training.pipeline import run_recipe

    class MultiWorkerMirroredStrategy:  # what keras_codec.training.loop.default_strategy returns under TF_CONFIG
        pass

    data = tdata.prepare([images], val_fraction=0.3, seed=0)
    with pytest.raises(ValueError, match="multi-worker run of the recipe is not supported yet"):
        run_recipe(tiny_recipe(), data, tmp_path / "run", strategy=MultiWorkerMirroredStrategy())
    assert not (tmp_path / "run").exists()


# --- fine-tuning a bundle ----------------------------------------------------------------------------------


def test_from_bundle_runs_the_finetune_stages_starting_from_its_weights(run, images, tmp_path):
    """With a zero learning rate and no refit, the fine-tuned refinement, post-filter, context model and tables
    are exactly the starting bundle's."""
    from edge_runtime.bundle import load_bundle, model_id_of
    from keras_codec.cli import main

    tiny = tiny_recipe()
    ref = tiny.stages[4]
    recipe = tiny.replace(name="tiny-ft", finetune=(
        Refine(steps=1, learning_rate=0.0, batch_size=2, patch_size=32, channels=ref.channels, layers=ref.layers,
               init_from_bundle=True, refit=False),
        PostFilter(steps=1, learning_rate=0.0, init_from_bundle=True, **_PF), Export(), Residual(max_side=32)))
    path = tmp_path / "ft.json"
    path.write_text(recipe.to_json())
    out = tmp_path / "ft"
    src = run / "bundle"
    assert main(["train", "--data", str(images), "--out", str(out), "--recipe", str(path), "--from", str(src),
                 "--no-report"]) == 0
    m = load_bundle(out / "bundle").manifest
    assert m["training"]["from_model_id"] == model_id_of(src).hex()
    assert m["training"]["stages"] == ["01_refine", "02_postfilter", "03_export", "04_residual"]
    for name in ("refine.npz", "postfilter.npz", "context.npz", "tables.npz"):
        a, b = np.load(src / name), np.load(out / "bundle" / name)
        assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a), name


def test_from_bundle_keeps_the_starting_bundle_when_fine_tuning_loses_on_held_out_images(run, images, tmp_path,
                                                                                         monkeypatch):
    """The held-out reports decide between the fine-tuned bundle and the one it started from."""
    from edge_runtime.bundle import load_bundle, model_id_of
    from keras_codec.cli import main
    from keras_codec.training import pipeline

    src = run / "bundle"
    start_id = model_id_of(src).hex()
    scores = {}

    def fake_report(bundle, data, out_dir, qualities, say, model_id):
        assert {e.name for e in data.val} and not {e.name for e in data.val} & {e.name for e in data.train}
        return {"mean_bd_rate_vs_jpeg2000": scores["start" if model_id == start_id else "tuned"]}

    monkeypatch.setattr(pipeline, "write_report", fake_report)
    tiny = tiny_recipe()
    ref = tiny.stages[4]
    recipe = tiny.replace(name="tiny-ft2", finetune=(
        Refine(steps=2, learning_rate=0.05, batch_size=2, patch_size=32, channels=ref.channels, layers=ref.layers,
               init_from_bundle=True, refit=False), Export(), Residual(max_side=32)))
    path = tmp_path / "ft.json"
    path.write_text(recipe.to_json())
    scores.update(start=-5.0, tuned=-4.0)  # fine-tuning lost 1 point on the held-out images
    out = tmp_path / "ft"
    assert main(["train", "--data", str(images), "--out", str(out), "--recipe", str(path), "--from", str(src)]) == 0
    tuned = out / "stages" / "01_refine" / "bundle"
    assert not np.array_equal(np.load(tuned / "refine.npz")["w0"], np.load(src / "refine.npz")["w0"])
    m = load_bundle(out / "bundle").manifest
    assert m["training"]["finetune_gate"]["kept"] == "start"
    for name in ("refine.npz", "postfilter.npz", "context.npz", "tables.npz", "residual.npz"):
        assert (out / "bundle" / name).read_bytes() == (src / name).read_bytes(), name
    # and the fine-tuned one when it is no worse
    data = tdata.prepare([images], val_fraction=tiny.val_fraction, seed=tiny.seed)
    scores.update(start=-5.0, tuned=-5.0)
    chosen, record = pipeline._keep_the_better(src, tuned, data, tmp_path / "gate", recipe, print)
    assert chosen == tuned and record["kept"] == "finetuned"


def test_from_without_a_value_is_the_shipped_bundle(images, recipe_file, tmp_path, capsys):
    from keras_codec.cli import main

    assert main(["train", "--from", "--data", str(images), "--out", str(tmp_path / "r"),
                 "--recipe", str(recipe_file)]) == 1
    assert "recipe 'tiny' has no finetune stages" in capsys.readouterr().err


def test_recipe_trains_under_mirrored_strategy_on_two_logical_cpus(images, tmp_path):
    import subprocess
    import sys

    worker = Path(__file__).with_name("_train_strategy_worker.py")
    r = subprocess.run([sys.executable, str(worker), str(images), str(tmp_path / "run")], capture_output=True,
                       text=True, timeout=600, cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["replicas"] == 2
    rows = (tmp_path / "run" / "stages" / "02_postfilter" / "work" / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and rows[-1].split(",")[0] == "4"
    assert json.loads((tmp_path / "run" / "state.json").read_text())["bundle"] == res["model_id"]


def test_a_training_stage_interrupted_mid_way_resumes_at_its_last_checkpoint(images, tmp_path, monkeypatch):
    from keras_codec.training import loop as train_mod
    from keras_codec.training.pipeline import run_recipe

    class Stop(Exception):
        pass

    recipe = tiny_recipe().replace(stages=tiny_recipe().stages[:1] + (PostFilter(steps=4, **_PF),))
    data = tdata.prepare([images], val_fraction=recipe.val_fraction, seed=0)
    flush, seen = train_mod._RunLog.flush, []

    def stop_at_3(self, step, stage):
        if step == 3:
            raise Stop
        flush(self, step, stage)

    def record(self, step, stage):
        seen.append(step)
        flush(self, step, stage)

    monkeypatch.setattr(train_mod._RunLog, "flush", stop_at_3)
    with pytest.raises(Stop):  # killed after step 3; the checkpoint of step 2 is on disk
        run_recipe(recipe, data, tmp_path / "run", ckpt_every=2, report=False, progress=lambda s: None)
    assert list(json.loads((tmp_path / "run" / "state.json").read_text())["done"]) == ["01_context_fit"]
    monkeypatch.setattr(train_mod._RunLog, "flush", record)
    run_recipe(recipe, data, tmp_path / "run", ckpt_every=2, report=False, progress=lambda s: None)
    assert seen == [3, 4]  # steps 1-2 were not trained again
    log = (tmp_path / "run" / "stages" / "02_postfilter" / "work" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in log[1:]] == ["1", "2", "3", "4"]
