"""Convert a Keras model or a TF function to TFLite, and run a TFLite model.

``to_tflite`` wraps whatever it is given in a function whose signature names
its inputs ``input_000, input_001, ...`` and its outputs ``output_000,
output_001, ...`` so that ``run_tflite`` can return the outputs in a stable
order, whatever order the converter gives the tensors internally:

- inputs: the Keras model's ``model.inputs`` order, or the function's
  positional arguments in order (nested arguments flattened by ``tf.nest``);
- outputs: ``tf.nest.flatten`` of what the model or function returns (a list
  or tuple in its order; a dict in sorted key order).

Only TFLite builtin ops are allowed (no Flex / SELECT_TF_OPS), so a model that
needs a TensorFlow op fails at conversion instead of at the edge.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from edge_runtime.tflite_runner import interpreter_module

__all__ = ["to_tflite", "run_tflite"]


def _input_name(i: int) -> str:
    return f"input_{i:03d}"


def _output_name(i: int) -> str:
    return f"output_{i:03d}"


def to_tflite(model_or_fn, optimizations=None) -> bytes:
    """Convert a ``tf.keras.Model``, a concrete function, or a ``tf.function`` with an
    input signature to a float TFLite flatbuffer with builtin ops only.

    ``optimizations`` is passed to the converter as is (default: none, float32).
    """
    trackable = None
    if isinstance(model_or_fn, tf.keras.Model):
        model = trackable = model_or_fn
        specs = [tf.TensorSpec(t.shape, t.dtype) for t in model.inputs]

        def call(*xs):
            return model(list(xs) if len(xs) > 1 else xs[0], training=False)

    else:
        fn = model_or_fn
        if not hasattr(fn, "structured_input_signature"):
            if not hasattr(fn, "get_concrete_function"):
                raise ValueError(
                    "to_tflite expects a tf.keras.Model, a concrete function or a tf.function "
                    f"with an input signature; got {type(fn).__name__}."
                )
            fn = fn.get_concrete_function()
        args, kwargs = fn.structured_input_signature
        if kwargs:
            raise ValueError("to_tflite: the function must take positional arguments only.")
        specs = tf.nest.flatten(args)
        structure = args

        def call(*xs):
            return fn(*tf.nest.pack_sequence_as(structure, list(xs)))

    named = [tf.TensorSpec(s.shape, s.dtype, name=_input_name(i)) for i, s in enumerate(specs)]

    @tf.function(input_signature=named)
    def wrapped(*xs):
        outputs = tf.nest.flatten(call(*xs))
        return {_output_name(i): t for i, t in enumerate(outputs)}

    if trackable is None:
        # The converter writes a signature (needed by run_tflite) only when it
        # gets a trackable object holding the function.
        trackable = tf.Module()
        trackable.fn = wrapped
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [wrapped.get_concrete_function()], trackable
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if optimizations:
        converter.optimizations = list(optimizations)
    return converter.convert()


def _interpreter_class():
    """The TFLite Interpreter class the edge uses (``ai_edge_litert``, else ``tflite_runtime``)."""
    return interpreter_module().Interpreter


def run_tflite(model_bytes: bytes, inputs: list[np.ndarray], num_threads: int = 1) -> list[np.ndarray]:
    """Run a model made by :func:`to_tflite` once; return its outputs in order.

    Inputs are given in the model's input order (see the module docstring) and
    may have any batch size the model allows; outputs come back as
    ``[output_000, output_001, ...]``, i.e. in ``tf.nest.flatten`` order of
    what the converted model returns.
    """
    interpreter = _interpreter_class()(model_content=model_bytes, num_threads=num_threads)
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        raise ValueError(f"run_tflite expects a model with one signature; found {sorted(signatures)}.")
    key = next(iter(signatures))
    input_names = sorted(signatures[key]["inputs"])
    output_names = sorted(signatures[key]["outputs"])
    if len(inputs) != len(input_names):
        raise ValueError(
            f"run_tflite: the model takes {len(input_names)} inputs {input_names}; got {len(inputs)}."
        )
    runner = interpreter.get_signature_runner(key)
    details = runner.get_input_details()
    feed = {
        name: np.ascontiguousarray(x, dtype=details[name]["dtype"]) for name, x in zip(input_names, inputs)
    }
    results = runner(**feed)
    return [np.array(results[name]) for name in output_names]
