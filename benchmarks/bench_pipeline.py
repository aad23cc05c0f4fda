"""Throughput of the tf.data training pipeline in patches per second.

Draws batches of 8 patches of 128² and 256² from the train split, without
augmentation, with the default augmentation (90° turns, scaling, mirroring)
and with small-angle rotation added; prints a table and writes
out/bench/pipeline.csv and out/bench/pipeline.png.

    python benchmarks/bench_pipeline.py [--batches 200] [--synthetic]

``--synthetic`` (or a missing ``data.corpus``) uses generated images of the
corpus's shapes instead of the real train split.
"""
from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np

from data.image import Image

CONFIGS = [
    ("none", dict(augment=False)),
    ("rot90+scale+mirror", dict(augment=True)),
    ("+angle 10°", dict(augment=True, max_angle=10.0)),
]


def synthetic_images(seed: int = 0) -> list[Image]:
    """Stand-ins for the train split: one 2k CR, CT and MR slices, a multi-frame MR, an RGB US frame."""
    rng = np.random.default_rng(seed)
    shapes = [(1, 2048, 1664, 1), (2, 512, 512, 1), (1, 128, 128, 1), (10, 64, 64, 1),
              (1, 480, 640, 3), (1, 256, 256, 1)]
    return [Image(pixels=rng.integers(0, 4096, shape).astype(np.uint16), bits_stored=12, signed=False)
            for shape in shapes]


def train_images(synthetic: bool) -> tuple[list[Image], str]:
    if not synthetic:
        try:
            from data.corpus import corpus, load
        except ImportError:
            pass
        else:
            return [load(item) for item in corpus(split="train")], "train split"
    return synthetic_images(), "synthetic"


def patches_per_second(images, patch_size, batches, warmup, **kwargs) -> float:
    from data.pipeline import make_dataset

    iterator = iter(make_dataset(images, patch_size=patch_size, batch_size=8, **kwargs))
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * 8 / (time.perf_counter() - start)


def main(args=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--synthetic", action="store_true", help="use generated images")
    parser.add_argument("--out", default="out/bench")
    options = parser.parse_args(args)

    images, source = train_images(options.synthetic)
    planes = sum(image.frames * image.samples for image in images)
    megapixels = sum(image.pixels.size for image in images) / 1e6
    print(f"{source}: {len(images)} images, {planes} planes, {megapixels:.1f} Mpx; "
          f"{os.cpu_count()} cores; {options.batches} batches of 8 after {options.warmup} warm-up")
    rows = []
    print(f"{'patch':>6}  {'augmentation':<20} {'patches/s':>10} {'Mpx/s':>7}")
    for patch_size in (128, 256):
        for name, kwargs in CONFIGS:
            rate = patches_per_second(images, patch_size, options.batches, options.warmup, **kwargs)
            rows.append(dict(source=source, patch=patch_size, augmentation=name,
                             patches_per_s=round(rate, 1), mpx_per_s=round(rate * patch_size**2 / 1e6, 2)))
            print(f"{patch_size:>6}  {name:<20} {rate:>10.0f} {rows[-1]['mpx_per_s']:>7.2f}")

    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "pipeline.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return rows
    fig, ax = plt.subplots(figsize=(6, 3))
    labels = [f"{r['patch']}² {r['augmentation']}" for r in rows]
    ax.barh(labels, [r["patches_per_s"] for r in rows])
    ax.set_xlabel("patches per second")
    ax.set_title(f"tf.data pipeline ({source})")
    fig.tight_layout()
    fig.savefig(out / "pipeline.png", dpi=100)
    return rows


if __name__ == "__main__":
    main()
