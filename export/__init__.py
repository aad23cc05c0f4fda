"""Keras model -> TFLite model bundle: the workstation step between ``keras_codec`` and ``edge_runtime``.

An image flows ``data -> keras_codec -> export -> edge_runtime``: export turns a trained bundle's
Keras transforms into the TFLite graphs the TensorFlow-free edge runs, and checks them.

- :mod:`export.graphs`: the encoder and decoder graphs, their signature keys and tensor names;
- :mod:`export.conversion`: :func:`~export.conversion.export_transforms`, which converts them to
  ``encoder.tflite`` / ``decoder.tflite`` (float32 or float16 weights) and writes the manifest's
  ``tflite`` section;
- :mod:`export.int8`: the full-integer post-filter ``postfilter.tflite`` and its exact integer reference;
- :mod:`export.verify`: the exported graphs against the Keras model, on random planes and real images;
- :mod:`export.tflite_utils`: any Keras model or ``tf.function`` to TFLite and back, by input order;
- ``python -m export`` (:mod:`export.__main__`): the command line behind ``keras-codec export``.
"""
