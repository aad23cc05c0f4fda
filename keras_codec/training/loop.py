"""Custom training loop for every model: distribution strategy, mixed precision, staged variables, resumable runs.

A model honours one contract: `build_fn(config)` returns a `tf.keras.Model` with
`rd_terms(x, training) -> {"loss", "bpp", "mse", ...}` (scalar tensors, `x` a float32 batch
(B, P, P, 1) in [0, 1]) and optionally `stage_variables(stage) -> list[tf.Variable]`.

A run lives in `out_dir`:

    config.json   the CodecConfig; resuming with a different one is refused
    stages.json   the stage plan (name, first step, end step)
    ckpt/         tf.train.Checkpoint(model, optimizer, step), the last two kept
    log.csv       step, stage, wall_s, loss, bpp, mse, psnr, patches_per_s, skipped
    tb/           TensorBoard scalars (every rd_terms entry, patches_per_s, skipped)

Reproducibility: `config.train.seed` seeds Python, NumPy and TensorFlow
(`tf.keras.utils.set_random_seed`) and should seed the dataset too, so a run from scratch
repeats bit for bit on the same machine, TensorFlow build and device set. Not bit-reproducible:
runs on other CPUs or GPUs (kernels and summation order differ), multi-replica runs (all-reduce
order), and resumed runs (the data pipeline and the random ops restart from their seeds rather
than from where they stopped; the model, optimizer and step do resume exactly).

Mixed precision (`config.train.mixed_precision`) sets the `mixed_float16` Keras policy while
the model is built and trained and wraps Adam in a dynamic `LossScaleOptimizer`. It is meant
for NVIDIA GPUs of compute capability 7.0 or more. TensorFlow 2.14 also runs it on CPU (it
warns that the policy "may run slowly"): the float16 convolutions and matrix products have CPU
kernels, so the path works there, but it is slower than float32 and only useful for testing.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import tensorflow as tf

from keras_codec.config import CodecConfig

__all__ = ["train", "default_strategy", "per_replica_batch_size", "MAX_BAD_STEPS", "last_logged_row", "copy_bundle"]

log = logging.getLogger(__name__)

CSV_FIELDS = ("step", "stage", "wall_s", "loss", "bpp", "mse", "psnr", "patches_per_s", "skipped")
MAX_BAD_STEPS = 20  # consecutive non-finite steps before a run is abandoned; > the ~15 a fresh loss scale may need


def default_strategy() -> tf.distribute.Strategy:
    """The strategy for this machine: multi-worker if TF_CONFIG names several workers, else all GPUs, else one device.

    `MultiWorkerMirroredStrategy` must exist before any other TensorFlow op runs, so call this
    first in a worker program (or let `train` call it before it does anything else).
    """
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}); see the tf.distribute multi-worker guide") from None
    cluster = tf_config.get("cluster", {})
    if len(cluster.get("worker", [])) + len(cluster.get("chief", [])) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def per_replica_batch_size(config: CodecConfig, input_context: tf.distribute.InputContext | None) -> int:
    """Batch size a `dataset_fn` should produce: `config.train.batch_size` is the global batch."""
    if input_context is None:
        return config.train.batch_size
    return input_context.get_per_replica_batch_size(config.train.batch_size)


def _stage_plan(stages, steps: int) -> list[tuple[str, int, int]]:
    """(name, first step, end step) per stage; the last stage runs on to `steps`, later ones are cut at it."""
    if stages is None:
        stages = [("joint", steps)]
    if not stages:
        raise ValueError("stages is empty; pass None to train all variables, or [(name, steps), ...]")
    plan, start = [], 0
    for i, (name, n) in enumerate(stages):
        if int(n) < 0:
            raise ValueError(f"stage {name!r} has {n} steps; expected a count >= 0")
        end = steps if i == len(stages) - 1 else min(start + int(n), steps)
        end = max(end, start)
        plan.append((str(name), start, end))
        start = end
    return plan


def _stage_at(plan, step: int):
    """The (name, first step) of the stage that runs step index `step`, or None past the end."""
    for name, start, end in plan:
        if start <= step < end:
            return name, start
    return None


def _stage_variables(model, stage: str) -> list:
    getter = getattr(model, "stage_variables", None)
    variables = list(getter(stage)) if getter is not None else list(model.trainable_variables)
    if not variables:
        raise ValueError(f"stage {stage!r} has no trainable variables in {type(model).__name__}")
    return variables


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _check_config(out_dir: str, config: CodecConfig, write: bool) -> None:
    """Refuse to continue a run made with another config; record the config of a new run."""
    path = os.path.join(out_dir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            old = CodecConfig.from_json(f.read())
        if old != config:
            a, b = _flatten(old.to_dict()), _flatten(config.to_dict())
            diff = ", ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} here"
                             for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
            raise ValueError(f"{path} holds a run with a different config ({diff}); "
                             "resume with the same config or train into a new out_dir")
    elif write:
        _write_atomic(path, config.to_json() + "\n")


def _check_stages(out_dir: str, plan, restored_step: int, write: bool) -> None:
    """Refuse a stage plan that puts the restored step in another stage than the run that saved it."""
    path = os.path.join(out_dir, "stages.json")
    if os.path.exists(path) and restored_step > 0:
        with open(path) as f:
            old = [tuple(s) for s in json.load(f)]
        # The checkpoint holds the optimizer of the stage that ran the last trained step.
        was, now = _stage_at(old, restored_step - 1), _stage_at(plan, restored_step - 1)
        if was is not None and now is not None and was != now:
            raise ValueError(f"step {restored_step} of the run in {out_dir} was trained in stage {was[0]!r} "
                             f"(from step {was[1]}) but the given stages put it in {now[0]!r} "
                             f"(from step {now[1]}); keep the stages of the steps already trained")
    if write:
        _write_atomic(path, json.dumps([list(s) for s in plan]) + "\n")


class _RunLog:
    """Window means of the step metrics, written to log.csv, TensorBoard and stdout by the chief."""

    def __init__(self, out_dir: str, restored_step: int, total_steps: int, write: bool, progress: bool):
        self.csv_path = os.path.join(out_dir, "log.csv")
        self.total, self.write, self.progress = total_steps, write, progress
        self.wall_offset = self._truncate_csv(restored_step) if write else 0.0
        self.writer = tf.summary.create_file_writer(os.path.join(out_dir, "tb")) if write else None
        self.t0 = time.perf_counter()
        self.done, self.skipped, self.patches = 0, 0, 0.0
        self.last = {}
        self._reset(self.t0)

    def _truncate_csv(self, restored_step: int) -> float:
        """Drop rows logged after the restored checkpoint; return the wall time reached so far."""
        rows = []
        if os.path.exists(self.csv_path):
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= restored_step]
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)
        return float(rows[-1]["wall_s"]) if rows else 0.0

    def _reset(self, now: float) -> None:
        self.sums, self.n, self.window_patches, self.window_t = {}, 0, 0.0, now

    def add(self, terms: dict, ok: bool, patches: float) -> None:
        self.done += 1
        self.patches += patches
        self.window_patches += patches
        if ok:
            self.n += 1
            for k, v in terms.items():
                self.sums[k] = self.sums.get(k, 0.0) + float(v)
        else:
            self.skipped += 1

    def flush(self, step: int, stage: str) -> None:
        now = time.perf_counter()
        means = {k: v / max(self.n, 1) for k, v in self.sums.items()}
        rate = self.window_patches / max(now - self.window_t, 1e-9)
        self.last = {**means, "patches_per_s": rate}
        self._reset(now)
        if not self.write:
            return
        row = {"step": step, "stage": stage, "wall_s": f"{self.wall_offset + now - self.t0:.3f}",
               "patches_per_s": f"{rate:.2f}", "skipped": self.skipped}
        row.update({k: f"{means[k]:.6g}" for k in ("loss", "bpp", "mse", "psnr") if k in means})
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, CSV_FIELDS).writerow(row)
        with self.writer.as_default(step=step):
            for k, v in means.items():
                tf.summary.scalar(k, v)
            tf.summary.scalar("patches_per_s", rate)
            tf.summary.scalar("skipped", self.skipped)
        if self.progress:
            eta = (self.total - step) * (now - self.t0) / max(self.done, 1)
            line = f"step {step}/{self.total} [{stage}]"
            line += f" loss {means['loss']:.4g}" if "loss" in means else ""
            line += f" bpp {means['bpp']:.3f}" if "bpp" in means else ""
            line += f" psnr {means['psnr']:.1f} dB" if "psnr" in means else ""
            print(f"{line} {rate:.1f} patches/s eta {_fmt_eta(eta)}", flush=True)

    def summary(self, step: int, replicas: int) -> dict:
        if self.writer is not None:
            self.writer.flush()
        elapsed = time.perf_counter() - self.t0
        return {**self.last, "step": step, "steps_done": self.done, "wall_s": elapsed,
                "patches_per_s": self.patches / elapsed if self.done else 0.0,
                "skipped": self.skipped, "replicas": replicas}


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _make_optimizer(config: CodecConfig, var_list):
    opt = tf.keras.optimizers.Adam(learning_rate=config.train.learning_rate)
    if config.train.mixed_precision:
        opt = tf.keras.mixed_precision.LossScaleOptimizer(opt)
    opt.build(var_list)
    return opt


def _make_train_step(strategy, model, opt, var_list, clip_norm: float):
    """One `tf.function` step: per-replica gradients, all-reduced, clipped by global norm, applied if finite.

    The finiteness test runs on all-reduced values, so every replica and worker takes the same
    branch; the branch is taken in cross-replica context because the optimizer's own merge_call
    may not sit inside replica-context control flow.
    """
    mixed = isinstance(opt, tf.keras.mixed_precision.LossScaleOptimizer)
    inv_replicas = 1.0 / strategy.num_replicas_in_sync
    used = []  # variables that receive a gradient, fixed at trace time

    def compute(x):
        with tf.GradientTape() as tape:
            terms = model.rd_terms(x, training=True)
            # rd_terms averages over the replica's batch; 1/replicas makes the summed gradient the global mean.
            loss = tf.cast(terms["loss"], tf.float32) * inv_replicas
            if mixed:
                loss = opt.get_scaled_loss(loss)
        grads = tape.gradient(loss, var_list)
        if mixed:
            grads = opt.get_unscaled_gradients(grads)
        pairs = [(g, v) for g, v in zip(grads, var_list) if g is not None]
        if not pairs:
            raise ValueError("the loss of rd_terms does not depend on any variable of this stage")
        used[:] = [v for _, v in pairs]
        ctx = tf.distribute.get_replica_context()
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [g for g, _ in pairs])
        terms = ctx.all_reduce(tf.distribute.ReduceOp.MEAN,
                               {k: tf.cast(v, tf.float32) for k, v in terms.items()})
        patches = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.shape(x)[0], tf.float32))
        norm = tf.linalg.global_norm(grads)
        # A non-finite norm turns every clipped gradient into NaN, which the loss scale optimizer also sees.
        grads, _ = tf.clip_by_global_norm(grads, clip_norm, use_norm=norm)
        return grads, terms, tf.math.is_finite(terms["loss"]), tf.math.is_finite(norm), patches

    def apply(grads):
        opt.apply_gradients(zip(grads, used), skip_gradients_aggregation=True)

    def first(value):
        return strategy.experimental_local_results(value)[0]

    @tf.function
    def train_step(batch):
        grads, terms, loss_ok, grads_ok, patches = strategy.run(compute, (batch,))
        loss_ok, grads_ok = first(loss_ok), first(grads_ok)
        # The loss scale optimizer must see overflowing gradients to lower its scale, and skips them itself.
        gate = loss_ok if mixed else tf.logical_and(loss_ok, grads_ok)

        def run_apply():
            strategy.run(apply, (grads,))
            return tf.constant(True)

        tf.cond(gate, run_apply, lambda: tf.constant(False))
        return {k: first(v) for k, v in terms.items()}, tf.logical_and(loss_ok, grads_ok), first(patches)

    return train_step


def train(build_fn: Callable[[CodecConfig], tf.keras.Model], config: CodecConfig,
          dataset_fn: Callable[[tf.distribute.InputContext | None], tf.data.Dataset],
          out_dir: str, steps: int, *, stages=None, strategy: tf.distribute.Strategy | None = None,
          log_every: int = 50, ckpt_every: int = 500, progress: bool = True,
          max_bad_steps: int = MAX_BAD_STEPS) -> dict:
    """Train `build_fn(config)` to `steps` total steps in `out_dir`, resuming from its last checkpoint.

    `dataset_fn(input_context)` returns an (ideally endless) dataset of float32 batches
    (B, P, P, 1) in [0, 1]. With a distribution strategy it gets a `tf.distribute.InputContext`
    and should shard by `input_pipeline_id` and batch `per_replica_batch_size(config, ctx)`;
    on a single device it gets None and batches `config.train.batch_size`.
    `stages` is a list of (stage name, steps) run in order, each training
    `model.stage_variables(name)` (all trainable variables if the model has no groups) with
    its own Adam; None means one stage, "joint". A step whose loss or gradients are not finite
    is skipped; `max_bad_steps` of them in a row raise RuntimeError.

    Returns the metrics of the last logged window and the timing of this call: step,
    steps_done, wall_s, patches_per_s, skipped, replicas and every rd_terms entry.
    """
    if strategy is None:
        strategy = default_strategy()
    if steps < 0 or log_every < 1 or ckpt_every < 1 or max_bad_steps < 1:
        raise ValueError(f"need steps >= 0, log_every, ckpt_every and max_bad_steps >= 1; got steps={steps}, "
                         f"log_every={log_every}, ckpt_every={ckpt_every}, max_bad_steps={max_bad_steps}")
    plan = _stage_plan(stages, steps)
    tc = config.train
    chief = strategy.extended.should_checkpoint
    resolver = getattr(strategy, "cluster_resolver", None)
    ckpt_dir = os.path.join(out_dir, "ckpt")
    # Every worker must take part in saving; only the chief's copy is kept (TF's multi-worker pattern).
    write_dir = ckpt_dir if chief else os.path.join(ckpt_dir, f"workertemp_{getattr(resolver, 'task_id', 0)}")
    os.makedirs(out_dir, exist_ok=True)
    _check_config(out_dir, config, write=chief)

    previous_policy = tf.keras.mixed_precision.global_policy()
    if tc.mixed_precision:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        tf.keras.utils.set_random_seed(tc.seed)
        with strategy.scope():
            model = build_fn(config)
            model.rd_terms(tf.zeros((1, tc.patch_size, tc.patch_size, 1)), training=False)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        latest = tf.train.latest_checkpoint(ckpt_dir)
        if latest:
            tf.train.Checkpoint(model=model, step=step_var).restore(latest).expect_partial()
        start = int(step_var.numpy())
        _check_stages(out_dir, plan, start, write=chief)

        runlog = _RunLog(out_dir, start, steps, write=chief, progress=progress)
        if strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy():
            dataset = dataset_fn(None)
        else:
            dataset = strategy.distribute_datasets_from_function(dataset_fn)
        iterator = None

        def next_batch():
            nonlocal iterator
            for _ in range(2):
                if iterator is None:
                    iterator = iter(dataset)
                try:
                    return next(iterator)
                except (StopIteration, tf.errors.OutOfRangeError):
                    iterator = None
            raise ValueError("dataset_fn returned a dataset without a single batch")

        step, bad_run = start, 0
        saved = start if latest else None
        for name, first_step, end_step in plan:
            if step >= end_step:
                continue
            var_list = _stage_variables(model, name)
            with strategy.scope():
                opt = _make_optimizer(config, var_list)
            ckpt = tf.train.Checkpoint(model=model, optimizer=opt, step=step_var)
            manager = tf.train.CheckpointManager(ckpt, write_dir, max_to_keep=2)
            if latest and step > first_step:
                ckpt.restore(latest).assert_existing_objects_matched()

            def save():
                step_var.assign(step)
                manager.save(checkpoint_number=step)
                if not chief:
                    shutil.rmtree(write_dir, ignore_errors=True)

            train_step = _make_train_step(strategy, model, opt, var_list, tc.clip_norm)
            while step < end_step:
                terms, ok, patches = train_step(next_batch())
                step += 1
                ok = bool(ok)
                runlog.add(terms, ok, float(patches))
                bad_run = 0 if ok else bad_run + 1
                if not ok:
                    log.warning("step %d [%s] skipped: non-finite loss (%s) or gradients, %d in a row",
                                step, name, float(terms["loss"]), bad_run)
                    if bad_run >= max_bad_steps:
                        kept = f"the checkpoint of step {saved} is intact" if saved is not None else "no checkpoint"
                        raise RuntimeError(
                            f"training in {out_dir} stopped at step {step} [{name}]: {bad_run} steps in a row had "
                            f"a non-finite loss or gradients ({kept}); look for the source (a log or division by "
                            f"zero in rd_terms, bad input), or train with a lower train.learning_rate (now "
                            f"{tc.learning_rate}) or train.clip_norm (now {tc.clip_norm}) in a new out_dir")
                if step % log_every == 0 or step == steps:
                    runlog.flush(step, name)
                if step % ckpt_every == 0 or step == steps:
                    save()
                    saved = step
            if saved != step:
                save()
        return runlog.summary(step, strategy.num_replicas_in_sync)
    finally:
        tf.keras.mixed_precision.set_global_policy(previous_policy)


def last_logged_row(out_dir) -> dict:
    """The last row of a run's log.csv ({} when there is none); its wall_s counts the whole run, resumes included."""
    path = os.path.join(str(out_dir), "log.csv")
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


STALE_GRAPHS = ("encoder.tflite", "decoder.tflite", "postfilter.tflite")


def copy_bundle(bundle_dir, bundle_out, files: dict, update: Callable[[dict], None]):
    """Copy a bundle to a new directory with new learned weights; returns the new directory (a Path).

    `files` maps a file name in the bundle to the file to copy there; `update(manifest)` edits the
    manifest in place. The TFLite graphs and the manifest's `tflite` section are left out: they
    hold the old weights (export the copy again).
    """
    src, dst = Path(bundle_dir), Path(bundle_out)
    if dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: write the new bundle to another directory (--bundle-out), then promote it")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    for name in STALE_GRAPHS:
        (dst / name).unlink(missing_ok=True)
    for name, path in files.items():
        shutil.copyfile(path, dst / name)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest.pop("tflite", None)
    update(manifest)
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return dst
