"""``python -m export.tflite_export``: the same command line as ``python -m export`` (:mod:`export.__main__`),
under the path the edge runtime's messages name."""
from __future__ import annotations

import sys

from export.__main__ import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
