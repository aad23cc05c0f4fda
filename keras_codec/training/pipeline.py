"""Run a recipe over its stages on a set of images: resumable, with progress, a bundle and an RD report.

A run lives in one folder RUN:

    recipe.json       the recipe (keras_codec.training.recipe)
    data.json         the images trained on and those held out, by name, group and pixel hash
    state.json        recipe digest, data fingerprint, starting bundle, the stages done (written atomically)
    stages/NN_kind/   per stage: `work/` (checkpoints and logs: an interrupted stage resumes at its last
                      checkpointed step) and `bundle/` (its result, renamed into place when complete)
    bundle/           the final bundle, ready for `edge-codec --bundle RUN/bundle`
    report/           RD report on the held-out images: eval.csv, rd_curves.png, report.json

With a starting bundle (`--from`), the fine-tuned bundle is kept only when its mean BD-rate against
JPEG 2000 on the held-out images is no worse than the starting bundle's; else the final bundle is the
starting one (state.json and the manifest's `training.finetune_gate` say which, with both numbers).

A rerun continues at the first stage not done; a rerun with another recipe, other images or
another starting bundle is refused (a new RUN folder starts afresh). The final bundle's manifest
records the recipe and the data fingerprint (`training.recipe`, `training.data`) instead of the
trainers' command lines, and no wall times (they are in state.json), so an interrupted and resumed
run writes the same bundle bytes as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import tensorflow as tf

from edge_runtime.bundle import load_bundle, model_id_of
from keras_codec.evaluation.evaluate import evaluate_bundle
from keras_codec.training.data import TrainingData
from keras_codec.training.recipe import Recipe
from keras_codec.training.stages import StageContext, run_stage

__all__ = ["run_recipe", "finalize_manifest", "install_bundle", "RunMismatchError", "stage_ids", "STATE_FORMAT"]

STATE_FORMAT = 1
VOLATILE_KEYS = ("command", "initialized_from", "wall_seconds")
"""Manifest keys the trainers fill with command lines and timings: left out of the final bundle."""

# Rough costs for the ETA, from the shipped bundle's wall times on 2 CPU cores (its manifest):
# context fit 173.9 s over 6.72 Mpx of crops at 9 qualities; refit 149.1 s (same planes, 8 hidden
# units); residual fit 193.1 s over 3.86 Mpx at 5 base qualities; post-filter 216 s for
# 3,000 x 16 patches of 128²; refinement 1,431 s for 16,000 x 16 patches of 128²; int8 export 44 s.
# The estimate of the stages left is then scaled by how the stages done compare with theirs.
SECONDS_PER_MPX_QUALITY = {"context_fit": 173.9 / (6.72 * 9), "refit": 149.1 / (6.72 * 9),
                           "residual": 193.1 / (3.86 * 5)}
SECONDS_PER_PATCH_MPX = {"postfilter": 216.0 / (3000 * 16 * 128 * 128 / 1e6),
                         "refine": 1431.0 / (16000 * 16 * 128 * 128 / 1e6)}
EXPORT_SECONDS = 44.0


class RunMismatchError(ValueError):
    """A rerun whose recipe, images or starting bundle differ from those the run folder was made with."""


def stage_ids(stages) -> list[str]:
    return [f"{i + 1:02d}_{s.kind}" for i, s in enumerate(stages)]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _crop_mpx(images, max_side: int, max_frames: int) -> float:
    total = 0
    for _name, img in images:
        total += min(img.frames, max_frames) * img.samples * min(img.rows, max_side) * min(img.cols, max_side)
    return total / 1e6


def estimate_seconds(stage, images) -> float:
    """A rough duration of `stage` on `images` ((name, Image) pairs) on 2 CPU cores, for the ETA."""
    k = stage.kind
    if k == "context_fit":
        return SECONDS_PER_MPX_QUALITY[k] * _crop_mpx(images, stage.max_side, stage.max_frames) * len(stage.qualities)
    if k == "residual":
        return SECONDS_PER_MPX_QUALITY[k] * _crop_mpx(images, stage.max_side, 1) * 5
    if k == "export":
        return EXPORT_SECONDS
    patches = stage.steps * stage.batch_size * stage.patch_size ** 2 / 1e6
    t = SECONDS_PER_PATCH_MPX[k] * patches
    if k == "refine":
        t += SECONDS_PER_MPX_QUALITY["refit"] * _crop_mpx(images, stage.refit_max_side, stage.refit_max_frames) \
            * len(stage.refit_qualities)
    return t


def _fmt(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def finalize_manifest(manifest: dict, recipe: Recipe, data: TrainingData, stages: list[str],
                      from_model_id: Optional[str]) -> dict:
    """The final bundle's manifest: command lines and wall times out, recipe and data fingerprint in."""
    out = _strip(manifest)
    training = dict(out.get("training", {}))
    training.update({"recipe": recipe.to_dict(), "recipe_digest": recipe.digest(), "stages": stages,
                     "data": {"source": data.source, "fingerprint": data.fingerprint,
                              "train_images": len(data.train), "val_images": len(data.val)},
                     "from_model_id": from_model_id,
                     "how": "keras-codec train (keras_codec.training.pipeline): run the recipe on the data"})
    out["training"] = training
    return out


def _state(run: Path) -> Optional[dict]:
    path = run / "state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _check_state(state: dict, run: Path, recipe: Recipe, data: TrainingData, from_id: Optional[str]) -> None:
    problems = []
    if state.get("recipe_digest") != recipe.digest():
        old = {}
        if (run / "recipe.json").is_file():
            old = json.loads((run / "recipe.json").read_text())
        new = recipe.to_dict()
        diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        problems.append(f"another recipe (differs in {', '.join(diff) or 'its digest'}; "
                        f"{run / 'recipe.json'} holds the run's)")
    if state.get("data_fingerprint") != data.fingerprint:
        problems.append("other images (data fingerprint "
                        f"{str(state.get('data_fingerprint'))[:12]}... there, {data.fingerprint[:12]}... here; "
                        f"{run / 'data.json'} lists the run's)")
    if state.get("from_model_id") != from_id:
        problems.append(f"another starting bundle ({state.get('from_model_id') or 'step 0'} there, "
                        f"{from_id or 'step 0'} here)")
    if problems:
        raise RunMismatchError(f"{run} holds a run made with " + " and ".join(problems)
                               + ": rerun with the same --recipe, --data and --from to resume it, "
                               "or train into a new --out")


def _check_strategy(strategy) -> None:
    """One process drives the whole recipe: a MultiWorkerMirroredStrategy is refused, with the reason."""
    if strategy is not None and "MultiWorker" in type(strategy).__name__:
        raise ValueError(
            "keras-codec train runs the whole recipe in one process (every GPU of the machine through "
            "MirroredStrategy); TF_CONFIG names several workers, and a multi-worker run of the recipe is not "
            "supported yet: the trainers keep their checkpoints on the chief only, and the fitting stages "
            "between the training stages would run on every worker. Unset TF_CONFIG, or train the "
            "post-filter and refinement stages multi-worker with keras_codec.training.loop.train")


def run_recipe(recipe: Recipe, data: TrainingData, run_dir, *, from_bundle=None, strategy=None,
               progress: Callable[[str], None] = None, after_stage: Callable[[str], None] = None,
               report: bool = True, corpus: bool = False, ckpt_every: int = 500) -> dict:
    """Run (or resume) `recipe` on `data` in `run_dir`; return {"bundle", "model_id", "report", "stages"}.

    `from_bundle`: fine-tune this bundle with the recipe's `finetune` stages (else its `stages`
    from step 0). `strategy`: the tf.distribute strategy of the training stages. `after_stage(id)`
    is called when a stage's result is in place and recorded. `ckpt_every`: training stages save a
    checkpoint every this many steps (a rerun resumes there). `corpus`: `data` is the sample corpus,
    whose train split the trainers read themselves (the shipped bundle's exact path). `progress`
    gets one line per event (default: stderr); the trainers' own lines go to stderr as well.
    """
    say = progress or (lambda s: print(s, file=sys.stderr, flush=True))
    _check_strategy(strategy)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    stages = list(recipe.finetune if from_bundle is not None else recipe.stages)
    if not stages:
        raise ValueError(f"recipe {recipe.name!r} has no {'finetune ' if from_bundle else ''}stages")
    from_id = model_id_of(Path(from_bundle)).hex() if from_bundle is not None else None
    state = _state(run)
    if state is not None:
        _check_state(state, run, recipe, data, from_id)
    else:
        if any(run.iterdir()):
            raise RunMismatchError(f"{run} is not empty and holds no run (state.json): train into a new or empty --out")
        state = {"format": STATE_FORMAT, "recipe": recipe.name, "recipe_digest": recipe.digest(),
                 "data_fingerprint": data.fingerprint, "from_model_id": from_id,
                 "from_bundle": None if from_bundle is None else str(from_bundle), "done": {}}
        _write_atomic(run / "recipe.json", recipe.to_json() + "\n")
        _write_atomic(run / "data.json", json.dumps(data.describe(), indent=1) + "\n")
        _write_atomic(run / "state.json", json.dumps(state, indent=2) + "\n")

    images = None if corpus else data.train_pairs()
    est_images = data.train_pairs()
    ctx = StageContext(recipe=recipe, images=images, strategy=strategy, progress=say, ckpt_every=ckpt_every)
    ids = stage_ids(stages)
    estimates = [estimate_seconds(s, est_images) for s in stages]
    source = None if from_bundle is None else Path(from_bundle)
    t_run = time.time()
    for i, (stage, sid) in enumerate(zip(stages, ids)):
        sdir = run / "stages" / sid
        out = sdir / "bundle"
        done = state["done"].get(sid)
        if done is not None and out.is_dir():
            say(f"[{i + 1}/{len(stages)}] {sid}: done earlier ({_fmt(done['seconds'])})")
            source = out
            continue
        taken = [(estimates[j], state["done"][d]["seconds"]) for j, d in enumerate(ids[:i]) if d in state["done"]]
        ratio = sum(t for _e, t in taken) / max(sum(e for e, _t in taken), 1e-9) if taken else 1.0
        left = ratio * sum(estimates[i:])
        say(f"[{i + 1}/{len(stages)}] {sid}: started; estimated {_fmt(ratio * estimates[i])} for this stage, "
            f"{_fmt(left)} for the run (ETA {time.strftime('%H:%M', time.localtime(time.time() + left))})")
        partial = sdir / "bundle.partial"
        shutil.rmtree(partial, ignore_errors=True)
        t0 = time.time()
        _clear_keras_session()
        with contextlib.redirect_stdout(sys.stderr):
            run_stage(stage, source, partial, sdir / "work", ctx)
        load_bundle(partial)  # a stage's result is a valid bundle
        seconds = time.time() - t0
        shutil.rmtree(out, ignore_errors=True)
        os.replace(partial, out)
        state["done"][sid] = {"seconds": round(seconds, 1), "model_id": model_id_of(out).hex()}
        _write_atomic(run / "state.json", json.dumps(state, indent=2) + "\n")
        source = out
        say(f"[{i + 1}/{len(stages)}] {sid}: done in {_fmt(seconds)}")
        if after_stage is not None:
            after_stage(sid)

    final = run / "bundle"
    if state.get("bundle") is None or not final.is_dir():
        kept = None
        if from_bundle is not None and report and data.val:
            source, kept = _keep_the_better(Path(from_bundle), source, data, run, recipe, say)
            state["finetune_gate"] = kept
            _write_atomic(run / "state.json", json.dumps(state, indent=2) + "\n")
        tmp = run / "bundle.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        manifest = finalize_manifest(json.loads((tmp / "manifest.json").read_text()), recipe, data, ids, from_id)
        if kept is not None:
            manifest["training"]["finetune_gate"] = kept
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        load_bundle(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        shutil.copyfile(run / "recipe.json", final / "recipe.json")
        state["bundle"] = model_id_of(final).hex()
        _write_atomic(run / "state.json", json.dumps(state, indent=2) + "\n")
    model_id = state["bundle"]
    say(f"bundle: {final} (model id {model_id[:16]}...), {_fmt(time.time() - t_run)} in this call")
    result = {"bundle": str(final), "model_id": model_id, "stages": ids, "report": None,
              "finetune_gate": state.get("finetune_gate")}
    if report:
        result["report"] = write_report(final, data, run / "report", recipe.report_qualities, say, model_id)
    return result


def _keep_the_better(start: Path, tuned: Path, data: TrainingData, run: Path, recipe: Recipe, say) -> tuple:
    """(bundle, record): of a fine-tuned bundle and the bundle it started from, the one with the lower mean
    BD-rate against JPEG 2000 on the held-out images (the fine-tuned one on a tie).

    Fine-tuning on a few images can fit them and lose on the rest of their kind; the held-out part, never
    trained on, decides, so `--from` never returns a bundle that does worse there than the one it was given.
    Both reports stay in RUN/stages (report_start, report_finetuned).
    """
    reports = {}
    for key, bundle in (("finetuned", tuned), ("start", start)):
        reports[key] = write_report(bundle, data, run / "stages" / f"report_{key}", recipe.report_qualities, say,
                                    model_id_of(bundle).hex())["mean_bd_rate_vs_jpeg2000"]
    keep = "finetuned" if not reports["finetuned"] > reports["start"] else "start"
    say(f"fine-tune: held-out mean BD-rate vs JPEG 2000 {reports['finetuned']:+.2f} % fine-tuned, "
        f"{reports['start']:+.2f} % the bundle it started from: "
        + ("the fine-tuned bundle is kept" if keep == "finetuned" else "the starting bundle is kept (fine-tuning "
                                                                        "did not help on the held-out images)"))
    record = {"kept": keep, "held_out_mean_bd_rate": {k: round(float(v), 4) for k, v in reports.items()},
              "rule": "the lower held-out mean BD-rate against JPEG 2000 (the fine-tuned bundle on a tie)"}
    return (tuned if keep == "finetuned" else start), record


def _clear_keras_session() -> None:
    """Fresh Keras name counters per stage, so a resumed stage builds the same graphs as in one long run."""
    tf.keras.backend.clear_session()


def write_report(bundle, data: TrainingData, out_dir: Path, qualities, say, model_id: str) -> dict:
    """RD report on the held-out images (keras_codec.evaluation.evaluate.evaluate_bundle): CSV, PNG, report.json."""
    out_dir = Path(out_dir)
    done = out_dir / "report.json"
    if done.is_file():
        rep = json.loads(done.read_text())
        if rep.get("model_id") == model_id:
            say(f"report: done earlier, {out_dir}")
            return rep
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    say(f"report: {len(data.val)} held-out images, qualities {list(qualities) if qualities else 'all'}")
    with contextlib.redirect_stdout(sys.stderr):
        res = evaluate_bundle(bundle, images=data.val_pairs(), qualities=list(qualities) if qualities else None,
                              out_dir=tmp, progress=say)
    rep = {"model_id": res["model_id"], "mean_bd_rate_vs_jpeg2000": res["mean_bd_rate"],
           "images": {n: {"bd_rate_vs_jpeg2000": v["bd_rate_vs_jpeg2000"], "ours_bpp_psnr": v["ours"]}
                      for n, v in res["images"].items()},
           "bd_rate": "Bjontegaard, piecewise cubic, 40-55 dB, PSNR over each image's dynamic range "
                      "(keras_codec.evaluation.metrics); negative = fewer bits than JPEG 2000",
           "files": ["eval.csv", "rd_curves.png"]}
    (tmp / "report.json").write_text(json.dumps(rep, indent=2, default=float) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    say(f"report: mean BD-rate vs JPEG 2000 {res['mean_bd_rate']:+.2f} % on {len(data.val)} held-out images; "
        f"{out_dir}/eval.csv, {out_dir}/rd_curves.png")
    return rep


def install_bundle(run_dir, dest, *, force: bool = False, keep_previous: bool = True) -> tuple:
    """Copy RUN/bundle into `dest` (the edge runtime's model folder), replacing it only with `force`.

    The copy goes to a temporary sibling first and is swapped in by rename, so `dest` is either the old
    bundle or the new one. A replaced bundle of another model id is kept beside it as ``<dest>-<its id, 12 hex>``
    (unless `keep_previous` is False): in edge_runtime/models the default decoder then still decodes the streams
    it wrote (edge_runtime.bundle.shipped_bundle_for). Returns (the installed model id, the kept folder or None).
    """
    src = Path(run_dir) / "bundle"
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no bundle; finish the run first (keras-codec train ... --out {run_dir})")
    load_bundle(src)
    dest = Path(dest)
    if dest.exists() and not force:
        raise FileExistsError(f"{dest}: a bundle is already there (model id {model_id_of(dest).hex()[:16]}...); "
                              "pass --force to replace it")
    tmp = dest.with_name(f".{dest.name}.installing")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    new_id = model_id_of(tmp)
    kept = None
    if dest.exists():  # the old folder goes whole (a RESULTS.md beside the old model describes that model)
        try:
            old_id = model_id_of(dest)
        except (OSError, ValueError):  # not a readable bundle: nothing decodes with it
            old_id = None
        if keep_previous and old_id is not None and old_id != new_id:
            kept = dest.with_name(f"{dest.name}-{old_id.hex()[:12]}")
        move_aside = kept is not None and not kept.exists()  # else dropped (a copy of that model may be there)
        old = kept if move_aside else dest.with_name(f".{dest.name}.old")
        if not move_aside:
            shutil.rmtree(old, ignore_errors=True)  # a run killed mid-swap left it
        os.replace(dest, old)
        os.replace(tmp, dest)
        if not move_aside:
            shutil.rmtree(old)
    else:
        os.replace(tmp, dest)
    return new_id.hex(), kept
