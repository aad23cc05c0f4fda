"""`keras-codec`: the workstation command line. Thin: parsing and printing here, the work elsewhere.

Each subcommand imports what it needs lazily, so `keras-codec corpus` does not load TensorFlow.
"""
from __future__ import annotations

import argparse
import sys


def _cmd_corpus(args) -> int:
    from data.corpus import corpus, corpus_table, excluded, summary

    items = corpus(args.split)
    print(corpus_table(items))
    print()
    counts = summary(items)
    for split, per in counts.items():
        print(f"{split}: {sum(per.values())} distinct images  " +
              ", ".join(f"{m} {n}" for m, n in sorted(per.items())))
    for name, why in excluded().items():
        print(f"excluded {name}: {why}")
    return 0


def _cmd_demo(args) -> int:
    from data.corpus import corpus, corpus_table

    print("keras_codec sample corpus (pydicom + pydicom-data):")
    print(corpus_table(corpus()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from keras_codec import __version__

    p = argparse.ArgumentParser(prog="keras-codec", description="keras_codec: a learned codec for medical images")
    p.add_argument("--version", action="version", version=f"keras-codec {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("corpus", help="list the sample corpus and its train/test split")
    c.add_argument("--split", choices=["train", "test"], default=None)
    c.set_defaults(func=_cmd_corpus)

    d = sub.add_parser("demo", help="the main job on the shipped model and the sample corpus")
    d.add_argument("--dir", default=None, help="a folder of your own images instead of the test split")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"keras-codec: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
