"""Rate-distortion of this build against another revision of the code, on the test split (no loss of bits).

A speed change must not cost bits. This script codes every test-split image (data.corpus) at a range
of quality levels with the edge runtime of two code trees, the working tree and a git revision
(checked out into a temporary worktree), on the same shipped bundle, and prints for each image the
BD-rate of this build against the reference (PSNR over the dynamic range, 40-55 dB, PCHIP; negative:
fewer bits) and how many streams are byte-identical. Each tree runs in its own child process, so the
two never share imported modules.

    .venv/bin/python benchmarks/bench_build_rd.py --ref f1b5fd1 [--qualities 6-22] [--out out/bench]
        [--ref-python OLD_VENV/bin/python]

Writes out/bench/build_rd.csv (one row per image, quality and build) and build_rd.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import hashlib, json, sys
import numpy as np
from data.corpus import corpus
from data.readers import read_image
from edge_runtime import runtime
from edge_runtime.codec import decode_image, encode_image
from edge_runtime.runtime import pixel_stream_bytes, psnr

qualities = json.loads(sys.argv[1])
b, c = runtime.load_codec(None)
rows = []
for item in corpus():
    if item.split != "test":
        continue
    image = read_image(item.path)
    for q in qualities:
        data = encode_image(image, coder=c, model_id=b.model_id, quality=q)
        decoded, _ = decode_image(data, coder=c)
        rows.append({"image": item.name, "quality": q, "bpp": 8.0 * pixel_stream_bytes(data) / image.pixels.size,
                     "psnr": psnr(image.pixels, decoded.pixels), "sha": hashlib.sha256(data).hexdigest()[:16]})
        print(f"  {item.name} q{q}: {rows[-1]['bpp']:.4f} bpp {rows[-1]['psnr']:.2f} dB", file=sys.stderr, flush=True)
print(json.dumps(rows))
"""


def run_tree(tree: Path, qualities: list, label: str, python: str = sys.executable) -> list:
    print(f"{label}: {tree} ({python})", flush=True)
    env = dict(os.environ, PYTHONPATH=str(tree), OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([python, "-c", CHILD, json.dumps(qualities)], cwd=tree, env=env,
                         stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_qualities(text: str) -> list:
    if "-" in text:
        a, b = (int(t) for t in text.split("-"))
        return list(range(a, b + 1, 2))
    return [int(t) for t in text.split(",")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", required=True, help="git revision to compare against (e.g. the last release)")
    ap.add_argument("--qualities", default="6-22", help="A-B (every other level) or a comma list")
    ap.add_argument("--out", default=str(ROOT / "out" / "bench"))
    ap.add_argument("--ref-python", default=sys.executable,
                    help="interpreter for the reference (a venv with that revision's requirements, e.g. its "
                         "TFLite runtime); default: this one")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from keras_codec.evaluation.metrics import bd_rate

    qualities = parse_qualities(args.qualities)
    with tempfile.TemporaryDirectory() as tmp:
        ref_tree = Path(tmp) / "ref"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(ref_tree), args.ref],
                       check=True)
        try:
            ref = run_tree(ref_tree, qualities, f"reference {args.ref}", args.ref_python)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref_tree)], check=False)
    new = run_tree(ROOT, qualities, "this build")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "build_rd.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["build", "image", "quality", "bpp", "psnr", "sha"])
        w.writeheader()
        for build, rows in (("ref", ref), ("new", new)):
            for r in rows:
                w.writerow({"build": build, **r})
    lines = [f"BD-rate of this build against {args.ref} (test split, qualities {qualities[0]}..{qualities[-1]}):", "",
             "| image | BD-rate | identical streams |", "|---|---|---|"]
    values = []
    for name in dict.fromkeys(r["image"] for r in ref):
        a = [r for r in ref if r["image"] == name]
        t = [r for r in new if r["image"] == name]
        same = sum(x["sha"] == y["sha"] for x, y in zip(a, t))
        v = bd_rate([r["bpp"] for r in a], [r["psnr"] for r in a], [r["bpp"] for r in t], [r["psnr"] for r in t])
        v = 0.0 if same == len(a) else v
        values.append(v)
        lines.append(f"| {name} | {v:+.3f} % | {same} of {len(a)} |")
    finite = [v for v in values if v == v]
    lines.append(f"| **mean** | **{sum(finite) / max(len(finite), 1):+.3f} %** | |")
    text = "\n".join(lines)
    print(text)
    (out / "build_rd.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
