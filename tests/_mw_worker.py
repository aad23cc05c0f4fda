"""Trains the toy codec in a fresh process under a distribution strategy; prints the result as JSON.

    python _mw_worker.py OUT_DIR STEPS multiworker   # strategy from TF_CONFIG (MultiWorkerMirroredStrategy)
    python _mw_worker.py OUT_DIR STEPS mirrored      # MirroredStrategy over two logical CPUs

Device and strategy setup must precede every other TensorFlow op, hence a process of its own.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow as tf  # noqa: E402

from keras_codec.training import loop as train_mod  # noqa: E402


def main(out_dir, steps, mode):
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = train_mod.default_strategy()
    from _toy_model import ToyCodec, dataset_fn_for
    from keras_codec.config import CodecConfig

    config = CodecConfig().replace(**{"train.patch_size": 32, "train.batch_size": 4})
    result = train_mod.train(ToyCodec, config, dataset_fn_for(config), out_dir, steps,
                             strategy=strategy, log_every=2, ckpt_every=2, progress=False)
    print(json.dumps({k: v for k, v in result.items()}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
