"""Runs a two-stage recipe (context fit, post-filter) under MirroredStrategy over two logical CPUs, in a
process of its own (device setup must precede every other TensorFlow op); prints the result as JSON.

    python _train_strategy_worker.py IMAGES RUN
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow as tf  # noqa: E402


def main(images, run):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    from keras_codec.config import CodecConfig
    from keras_codec.training import data as tdata
    from keras_codec.training.pipeline import run_recipe
    from keras_codec.training.recipe import ContextFit, PostFilter, Recipe

    recipe = Recipe(name="mirrored", config=CodecConfig().replace(**{"wavelet.levels": 2}), val_fraction=0.3,
                    stages=(ContextFit(max_side=64, max_frames=1, qualities=(6, 14, 20)),
                            PostFilter(steps=4, batch_size=4, patch_size=32, channels=4, layers=2,
                                       measure_gain=False)))
    data = tdata.prepare([images], val_fraction=recipe.val_fraction, seed=0)
    res = run_recipe(recipe, data, run, strategy=strategy, report=False, progress=lambda s: None)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "model_id": res["model_id"]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
