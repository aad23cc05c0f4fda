"""The stages a recipe chains: each reads the previous stage's bundle and writes a new bundle folder.

Every stage function has one signature, ``run(stage, source, out, work, ctx)``: `stage` is its
recipe entry (keras_codec.training.recipe), `source` the input bundle folder (None for the first
stage from scratch), `out` the folder to write the new bundle to (created by the stage), `work`
a folder of its own that survives an interruption (training checkpoints: a rerun resumes at the
step reached), `ctx` the :class:`StageContext` of the run. The stages wrap the trainers and
fitters (keras_codec.training.fit_default, train_postfilter, train_refine, fit_residual, export): the
work and its hyper-parameters' meaning are theirs. :func:`train_config` is the single stage of a model
config that `keras-codec train --config` runs.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from edge_runtime.bundle import load_bundle
from export.conversion import export_transforms
from export.int8 import representative_planes
from keras_codec.config import CodecConfig
from keras_codec.training.fit_default import fit_default, write_initial_bundle
from keras_codec.training.fit_residual import fit_residual
from keras_codec.training.paper import train_paper
from keras_codec.training.postfilter import train_postfilter
from keras_codec.training.recipe import ContextFit, Export, PostFilter, Recipe, Refine, Residual
from keras_codec.training.refine import train_refine

__all__ = ["StageContext", "run_stage", "train_config", "REPRESENTATIVE_PLANES_PER_IMAGE"]

REPRESENTATIVE_PLANES_PER_IMAGE = 3
"""int8 calibration on the user's images: the first planes of each image, as export does on the corpus."""
GAIN_IMAGES = 5
"""The post-filter's gain is measured on this many train images (the corpus run names its own 5)."""


@dataclass
class StageContext:
    """What every stage of a run shares: the recipe, the training images, the strategy, progress."""

    recipe: Recipe
    images: Optional[list] = None       # (name, Image) pairs to train on; None: the corpus train split
    strategy: object = None             # tf.distribute strategy of the training stages (None: train's default)
    progress: Callable[[str], None] = print
    log_every: int = 100
    ckpt_every: int = 500

    @property
    def image_records(self):
        return None if self.images is None else [img for _n, img in self.images]


def _log_every(ctx: StageContext, steps: int) -> int:
    return max(1, min(ctx.log_every, steps // 10 or 1))


def _context_fit(stage: ContextFit, source, out: Path, work: Path, ctx: StageContext) -> None:
    if source is not None:
        raise ValueError("a context_fit stage starts a model from step 0; it cannot follow another stage "
                         "or fine-tune a bundle (use the recipe's `finetune` stages with --from)")
    config = ctx.recipe.config.replace(**{"train.seed": ctx.recipe.seed})
    fit_default(config, out, seed=ctx.recipe.seed, learned_tables=stage.learned_tables, progress=ctx.progress,
                images=ctx.images, max_side=stage.max_side, max_frames=stage.max_frames,
                qualities=tuple(stage.qualities))


def _postfilter(stage: PostFilter, source, out: Path, work: Path, ctx: StageContext) -> None:
    gain = None if ctx.images is None else ctx.images[:GAIN_IMAGES]
    train_postfilter(source, work, stage.steps, ctx.recipe.seed, bundle_out=out, channels=stage.channels,
                     layers=stage.layers, input_scaling=stage.input_scaling, batch_size=stage.batch_size,
                     learning_rate=stage.learning_rate, patch_size=stage.patch_size,
                     log_every=_log_every(ctx, stage.steps), ckpt_every=ctx.ckpt_every,
                     measure=stage.measure_gain, init_from_bundle=stage.init_from_bundle,
                     images=ctx.image_records, gain_sources=gain, strategy=ctx.strategy)


def _representative(bundle, images) -> list:
    """int8 calibration set from the user's train images, as export.int8 does on the corpus."""
    def planes():
        for _name, img in images:
            which = [(f, s) for f in range(img.frames) for s in range(img.samples)]
            for f, s in which[:REPRESENTATIVE_PLANES_PER_IMAGE]:
                px = img.pixels[f, :, :, s].astype(np.float64)
                lo, hi = px.min(), px.max()
                yield (px - lo) / max(hi - lo, 1.0)

    return representative_planes(bundle, planes=planes())


def _export(stage: Export, source, out: Path, work: Path, ctx: StageContext) -> None:
    shutil.copytree(source, out)
    rep = None
    if stage.quant == "int8" and ctx.images is not None:
        ctx.progress(f"export: int8 calibration on {len(ctx.images)} train images")
        rep = _representative(load_bundle(out), ctx.images)
    export_transforms(out, quant=stage.quant, representative=rep, progress=ctx.progress)


def _residual(stage: Residual, source, out: Path, work: Path, ctx: StageContext) -> None:
    shutil.copytree(source, out)
    fit_residual(out, seed=ctx.recipe.seed, progress=ctx.progress, images=ctx.images, max_side=stage.max_side)


def _refine(stage: Refine, source, out: Path, work: Path, ctx: StageContext) -> None:
    refit = {"seed": ctx.recipe.seed, "images": ctx.images, "max_side": stage.refit_max_side,
             "max_frames": stage.refit_max_frames, "qualities": tuple(stage.refit_qualities)}
    train_refine(source, work, stage.steps, ctx.recipe.seed, bundle_out=out, channels=stage.channels,
                 layers=stage.layers, batch_size=stage.batch_size, learning_rate=stage.learning_rate,
                 patch_size=stage.patch_size, log_every=_log_every(ctx, stage.steps), ckpt_every=ctx.ckpt_every,
                 context_hidden=stage.context_hidden, images=ctx.image_records, strategy=ctx.strategy,
                 init_from_bundle=stage.init_from_bundle, refit_options=refit, refit=stage.refit)


RUNNERS = {"context_fit": _context_fit, "postfilter": _postfilter, "export": _export, "residual": _residual,
           "refine": _refine}


def run_stage(stage, source, out, work, ctx: StageContext) -> None:
    """Run one recipe stage: `source` bundle (or None) -> new bundle folder `out`; resumable state in `work`."""
    Path(work).mkdir(parents=True, exist_ok=True)
    RUNNERS[stage.kind](stage, None if source is None else Path(source), Path(out), Path(work), ctx)


def train_config(config: CodecConfig, out, *, stage: str = "fit", steps: int = 0, seed: int = 0,
                 init_only: bool = False, bundle=None, bundle_out=None) -> tuple:
    """One stage of a model config (`keras-codec train --config`): for `default`, the context fit into `out`
    (`init_only`: the untrained bundle) or, `stage="refine"`, the refinement of `bundle` for `steps`; for
    `paper`, its training for `steps`. Returns (which ran: "fit", "refine" or "paper", the trainer's result)."""
    if config.name == "default" and stage == "refine":
        return "refine", train_refine(bundle, out, steps, seed, bundle_out=bundle_out,
                                      channels=config.wavelet.refine_channels or Refine.channels)
    if config.name == "default":
        if init_only:
            return "fit", write_initial_bundle(config, out)
        return "fit", fit_default(config, out, seed=seed)
    return "paper", train_paper(config, out, steps=steps)
