"""Rate-distortion (and, with --speed, speed) of model bundles against JPEG 2000, JPEG XL and JPEG-LS.

A script form of ``keras-codec bench`` (the engine is :mod:`keras_codec.evaluation.engine`, inside the installed
package so that ``pip install -e .`` is enough to run it from anywhere); it takes the same options:

    .venv/bin/python benchmarks/bench_rd.py [--model B [--model B2]] [--dir D] [--speed] [--out out/bench]

Prints progress, the BD-rate lines and the report; writes results.md, points.csv, bd_rate.csv,
lossless.csv and PNG rate-distortion curves per image and per modality under --out.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from keras_codec.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
