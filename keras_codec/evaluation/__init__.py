"""Evaluation, in layers that import one way: metrics <- baselines <- engine <- presets.

:mod:`.metrics` (the one PSNR, SSIM, bpp, BD-rate), :mod:`.baselines` (the classical codecs),
:mod:`.engine` (our codec and theirs measured and compared on the same images), and the presets
built on it: :mod:`.bench` with :mod:`.bounded` (`keras-codec bench`), :mod:`.evaluate`
(`keras-codec eval`), :mod:`.demo` (`keras-codec demo`) and :mod:`.paper` (the paper model).
:mod:`.speed`, the speed benchmark, sits beside the engine on metrics and baselines.

Nothing in this package imports TensorFlow at import time: `keras-codec demo` runs in the edge venv.
"""
