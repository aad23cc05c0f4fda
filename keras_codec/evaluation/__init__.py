"""Evaluation: metrics, the classical baselines, the RD / bench / demo engine and the speed benchmark.

Nothing in this package imports TensorFlow at import time: `keras-codec demo` runs in the edge venv.
"""
