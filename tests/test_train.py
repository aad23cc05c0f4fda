"""The training loop on a toy codec: convergence, resume, NaN guard, stages, strategies, mixed precision."""
import csv
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from _toy_model import ToyCodec, dataset_fn_for
from keras_codec.config import CodecConfig
from keras_codec.training.loop import train

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = CodecConfig().replace(**{"train.patch_size": 32, "train.batch_size": 4, "train.learning_rate": 3e-3})
SUBPROCESS_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def run(out_dir, steps, config=CONFIG, build_fn=ToyCodec, **kw):
    kw = {"log_every": 5, "ckpt_every": 5, "progress": False, **kw}
    return train(build_fn, config, dataset_fn_for(config), str(out_dir), steps, **kw)


def csv_rows(out_dir):
    with open(os.path.join(out_dir, "log.csv"), newline="") as f:
        return list(csv.DictReader(f))


def ckpt_values(out_dir, step):
    """Model and optimizer values of checkpoint `step`, without the step counters."""
    reader = tf.train.load_checkpoint(os.path.join(out_dir, "ckpt", f"ckpt-{step}"))
    names = [n for n in reader.get_variable_to_shape_map()
             if not re.search(r"^step/|save_counter|calls|iteration|_CHECKPOINTABLE_OBJECT_GRAPH", n)]
    return {n: reader.get_tensor(n) for n in names}


def test_loss_goes_down_and_progress_line(tmp_path, capsys):
    result = run(tmp_path, 30, log_every=1, progress=True)
    losses = [float(r["loss"]) for r in csv_rows(tmp_path)]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert result["step"] == result["steps_done"] == 30 and result["replicas"] == 1
    assert result["patches_per_s"] > 0 and result["skipped"] == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert re.fullmatch(r"step 30/30 \[joint\] loss \S+ bpp \S+ psnr \S+ dB \S+ patches/s eta \d+s", line)
    assert os.listdir(tmp_path / "tb")


def test_same_seed_same_run(tmp_path):
    run(tmp_path / "a", 5)
    run(tmp_path / "b", 5)
    a, b = ckpt_values(tmp_path / "a", 5), ckpt_values(tmp_path / "b", 5)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_continues_and_refuses_other_config(tmp_path):
    assert run(tmp_path, 10)["steps_done"] == 10
    result = run(tmp_path, 20)
    assert result["steps_done"] == 10 and result["step"] == 20
    rows = csv_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20]
    assert float(rows[2]["wall_s"]) >= float(rows[1]["wall_s"])
    latest = tf.train.latest_checkpoint(str(tmp_path / "ckpt"))
    assert latest.endswith("ckpt-20")
    assert tf.train.load_variable(latest, "step/.ATTRIBUTES/VARIABLE_VALUE") == 20
    assert len([f for f in os.listdir(tmp_path / "ckpt") if f.endswith(".index")]) == 2
    assert run(tmp_path, 20)["steps_done"] == 0

    with pytest.raises(ValueError, match=r"different config \(train.lmbda: 0.01 there, 0.02 here\)"):
        run(tmp_path, 30, config=CONFIG.replace(**{"train.lmbda": 0.02}))
    with pytest.raises(ValueError, match="keep the stages"):
        run(tmp_path, 30, stages=[("entropy", 15), ("joint", 15)])


def test_nan_step_is_skipped(tmp_path):
    result = run(tmp_path, 3, build_fn=lambda c: ToyCodec(c, nan_steps=(3,)), ckpt_every=2)
    assert result["skipped"] == 1 and result["steps_done"] == 3
    before, after = ckpt_values(tmp_path, 2), ckpt_values(tmp_path, 3)
    assert any("kernel" in k for k in before)
    for k in before:
        assert np.all(np.isfinite(after[k])) and np.array_equal(before[k], after[k]), k
    assert csv_rows(tmp_path)[-1]["skipped"] == "1"


def test_consecutive_nan_steps_abort(tmp_path):
    with pytest.raises(RuntimeError, match="3 steps in a row had a non-finite loss"):
        run(tmp_path, 10, build_fn=lambda c: ToyCodec(c, nan_steps=range(2, 10)), max_bad_steps=3)


def test_stages_train_only_their_variables(tmp_path):
    models, initial = [], []

    def build(config):
        model = ToyCodec(config)
        model.rd_terms(tf.zeros((1, 32, 32, 1)), training=False)
        initial.append([v.numpy() for v in model.trainable_variables])
        models.append(model)
        return model

    stages = [("entropy", 3), ("joint", 3)]
    run(tmp_path, 3, build_fn=build, stages=stages, log_every=1)
    changed = [v.name for v, v0 in zip(models[0].trainable_variables, initial[0])
               if not np.array_equal(v.numpy(), v0)]
    assert changed == [models[0].log_scale.name]

    after_entropy = [v.numpy() for v in models[0].trainable_variables]
    run(tmp_path, 6, build_fn=build, stages=stages, log_every=1)
    after_joint = [v.numpy() for v in models[1].trainable_variables]
    assert not any(np.array_equal(a, b) for a, b in zip(after_entropy, after_joint))
    assert [r["stage"] for r in csv_rows(tmp_path)] == ["entropy"] * 3 + ["joint"] * 3


def test_mixed_precision_runs_on_cpu(tmp_path):
    models = []
    config = CONFIG.replace(**{"train.mixed_precision": True})
    result = run(tmp_path, 4, config=config, build_fn=lambda c: models.append(ToyCodec(c)) or models[-1])
    assert result["steps_done"] == 4 and np.isfinite(result["loss"])
    conv = models[0].encoder.layers[0]
    assert conv.compute_dtype == "float16" and conv.kernel.dtype == tf.float32
    assert tf.keras.mixed_precision.global_policy().name == "float32"
    names = [n for n, _ in tf.train.list_variables(str(tmp_path / "ckpt"))]
    assert "optimizer/loss_scale/current_loss_scale/.ATTRIBUTES/VARIABLE_VALUE" in names
    assert run(tmp_path, 6, config=config)["steps_done"] == 2


def worker(out_dir, steps, mode, env=None):
    cmd = [sys.executable, os.path.join(HERE, "_mw_worker.py"), str(out_dir), str(steps), mode]
    return subprocess.Popen(cmd, env=env or SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc, timeout=60):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_mirrored_strategy_two_logical_cpus(tmp_path):
    result = finish(worker(tmp_path, 4, "mirrored"))
    assert result["replicas"] == 2 and result["steps_done"] == 4 and np.isfinite(result["loss"])
    assert [int(r["step"]) for r in csv_rows(tmp_path)] == [2, 4]


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_multi_worker_mirrored_strategy(tmp_path):
    hosts = [f"localhost:{free_port()}" for _ in range(2)]
    procs = []
    for i in range(2):
        tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}
        procs.append(worker(tmp_path, 4, "multiworker", dict(SUBPROCESS_ENV, TF_CONFIG=json.dumps(tf_config))))
    try:
        results = [finish(p, timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(r["replicas"] == 2 and r["steps_done"] == 4 for r in results)
    assert results[0]["loss"] == results[1]["loss"]
    assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")).endswith("ckpt-4")
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index",
                                                     "ckpt-4.data-00000-of-00001", "ckpt-4.index"]
