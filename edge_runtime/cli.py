"""`edge-codec`: the TensorFlow-free command line for carts and tablets."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from edge_runtime import __version__

    p = argparse.ArgumentParser(prog="edge-codec", description="keras_codec edge runtime (no TensorFlow)")
    p.add_argument("--version", action="version", version=f"edge-codec {__version__}")
    return p


def main(argv=None) -> int:
    build_parser().parse_args(argv)
    build_parser().print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
