"""Train the `paper` model (the seed paper's CNN + DCT + dense autoencoder) and freeze it for coding.

`train_paper(config, out_dir, steps)` runs `keras_codec.training.loop.train` on random tiles of the
training split in two stages: "entropy" (the prior alone, min(200, steps // 10) steps, so the
rate term starts from a fitted density) then "joint" (everything, the rest). The trainer
resumes from `out_dir/ckpt`, so calling it again with more steps continues the run.

When training ends the model's range-coding tables are built and the run is frozen into
`out_dir/final/`:

    final/weights.*     tf.train.Checkpoint(model=model) of the trained model (no optimizer)
    final/tables.npz    `PaperCodec.entropy_tables()` as fixed after training
    final/summary.json  the step reached and the trainer's last metrics

`load_paper(run_dir)` is the way back: it rebuilds the model from `run_dir/config.json`,
restores `final/weights` (or, when a run has not finished, its latest checkpoint in
`run_dir/ckpt/`), builds the tables from the restored prior and, when `final/tables.npz`
exists, checks that they are the ones frozen after training.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Callable, Iterable, Optional

import numpy as np
import tensorflow as tf

from data.pipeline import make_dataset
from keras_codec.config import CodecConfig
from keras_codec.models.paper import build_paper
from keras_codec.training.loop import per_replica_batch_size, train

__all__ = ["train_paper", "load_paper", "paper_stages", "FINAL_DIR"]

log = logging.getLogger(__name__)

FINAL_DIR = "final"
ENTROPY_STAGE_MAX = 200  # steps of the prior-only stage


def paper_stages(steps: int) -> list[tuple[str, int]]:
    """[("entropy", min(200, steps // 10)), ("joint", the rest)]."""
    first = min(ENTROPY_STAGE_MAX, steps // 10)
    return [("entropy", first), ("joint", steps - first)]


def _dataset_fn(config: CodecConfig, images: Optional[list]) -> Callable:
    def dataset_fn(input_context=None):
        seed = config.train.seed
        if input_context is not None:
            # Each input pipeline draws its own patches (make_dataset keys patches by (seed, index)).
            seed += 1_000_003 * input_context.input_pipeline_id
        return make_dataset(images, split="train", patch_size=config.paper.tile,
                            batch_size=per_replica_batch_size(config, input_context), seed=seed)

    return dataset_fn


def _build(config: CodecConfig):
    model = build_paper(config)
    # Creates every variable (the trainer builds the model the same way before restoring).
    model.rd_terms(tf.zeros((1, config.paper.tile, config.paper.tile, 1)), training=False)
    return model


def train_paper(config: CodecConfig, out_dir: str, steps: int, progress: bool = True, *,
                images: Optional[Iterable] = None, dataset_fn: Optional[Callable] = None,
                log_every: int = 50, ckpt_every: int = 500) -> dict:
    """Train the paper model to `steps` steps in `out_dir` (resuming), then freeze it in `out_dir/final`.

    Patches are `config.paper.tile` square, `config.train.batch_size` per batch, drawn from
    the corpus's training split, or from `images` (a list of `data.image.Image`) when given;
    `dataset_fn(input_context)` replaces the dataset altogether. Returns the trainer's summary
    plus `final_dir` and `bits_per_tile` (the latent's estimated size with the built tables
    on one batch).
    """
    if config.name != "paper":
        log.warning("train_paper: config %r is not named 'paper'; training the paper model anyway", config.name)
    if config.train.patch_size != config.paper.tile:
        # The trainer builds the model on a patch_size probe; tiles are what the model codes.
        config = config.replace(**{"train.patch_size": config.paper.tile})
    if dataset_fn is None:
        dataset_fn = _dataset_fn(config, None if images is None else list(images))
    res = train(build_paper, config, dataset_fn, out_dir, steps, stages=paper_stages(steps),
                log_every=log_every, ckpt_every=ckpt_every, progress=progress)

    model, step = load_paper(out_dir, final=False)
    final = os.path.join(out_dir, FINAL_DIR)
    os.makedirs(final, exist_ok=True)
    tf.train.Checkpoint(model=model).write(os.path.join(final, "weights"))
    tables = model.entropy_tables()
    np.savez(os.path.join(final, "tables.npz"), **tables)
    batch = next(iter(dataset_fn(None)))
    symbols = model.compress_tiles(np.asarray(batch))
    bits = float(np.mean(model.estimated_bits(symbols)))
    res = {**{k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in res.items()},
           "final_dir": final, "bits_per_tile": bits}
    with open(os.path.join(final, "summary.json"), "w") as f:
        json.dump({"step": step, **res}, f, indent=2, default=float)
    if progress:
        print(f"final model (step {step}) in {final}: {bits:.1f} bits per {config.paper.tile}px tile "
              f"({bits / config.paper.tile ** 2:.4f} bpp) estimated on one batch", flush=True)
    return res


def load_paper(run_dir: str, final: Optional[bool] = None):
    """(model with tables built, step) from a run directory of `train_paper`.

    `final=None` takes `run_dir/final/weights` when present, else the latest checkpoint of
    `run_dir/ckpt` (an unfinished run); True / False insist on one of them.
    """
    with open(os.path.join(run_dir, "config.json")) as f:
        config = CodecConfig.from_json(f.read())
    model = _build(config)
    weights = os.path.join(run_dir, FINAL_DIR, "weights")
    use_final = os.path.exists(weights + ".index") if final is None else final
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    if use_final:
        if not os.path.exists(weights + ".index"):
            raise FileNotFoundError(f"{run_dir} has no {FINAL_DIR}/weights; train it to the end with train_paper")
        tf.train.Checkpoint(model=model).read(weights).expect_partial()
        summary = os.path.join(run_dir, FINAL_DIR, "summary.json")
        step = json.load(open(summary)).get("step", -1) if os.path.exists(summary) else -1
    else:
        latest = tf.train.latest_checkpoint(os.path.join(run_dir, "ckpt"))
        if latest is None:
            raise FileNotFoundError(f"{run_dir} has no checkpoint in ckpt/ (has training started?)")
        tf.train.Checkpoint(model=model, step=step_var).restore(latest).expect_partial()
        step = int(step_var.numpy())
    model.build_tables()
    saved = os.path.join(run_dir, FINAL_DIR, "tables.npz")
    if use_final and os.path.exists(saved):
        with np.load(saved) as z:
            now = model.entropy_tables()
            if any(not np.array_equal(z[k], now[k]) for k in now):
                log.warning("the tables rebuilt from %s differ from the frozen %s (another machine or "
                            "TensorFlow build?); coding stays consistent within this process", weights, saved)
    return model, step
