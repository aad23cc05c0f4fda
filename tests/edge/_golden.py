"""What the golden-stream tests share: the pixel digest they record and the shipped coder they decode with."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle import default_bundle_path, load_bundle
from edge_runtime.runtime import load_codec

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def digest(pixels: np.ndarray) -> str:
    """SHA-256 of the pixels as little-endian bytes of their dtype."""
    return hashlib.sha256(np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()).hexdigest()


def shipped_spec(spec_path: Path, kernels: str, what: str) -> tuple:
    """(spec, model ids the shipped bundle answers to, its coder on `kernels`); skips when the streams
    of `spec_path` were written by an earlier shipped bundle."""
    spec = json.loads(Path(spec_path).read_text())
    bundle = load_bundle(default_bundle_path())
    ids = getattr(bundle, "model_ids", [bundle.model_id])  # the bundle's id and the legacy one streams may carry
    if spec["model_id"] not in [i.hex() for i in ids]:
        pytest.skip(f"the golden {what} streams belong to an earlier shipped bundle")
    return spec, ids, load_codec(bundle, kernels=kernels)[1]
