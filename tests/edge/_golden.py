"""What the golden-stream tests share: the pixel digest they record and the shipped coder they decode with."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle import load_bundle, shipped_bundle_for
from edge_runtime.runtime import load_codec

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def digest(pixels: np.ndarray) -> str:
    """SHA-256 of the pixels as little-endian bytes of their dtype."""
    return hashlib.sha256(np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()).hexdigest()


def shipped_spec(spec_path: Path, kernels: str, what: str) -> tuple:
    """(spec, model ids the shipped bundle that wrote the streams of `spec_path` answers to, its coder on
    `kernels`): the default, or an earlier default shipped beside it (edge_runtime.bundle.shipped_bundle_for),
    as the default decoder picks it; skips when no shipped bundle holds their model."""
    spec = json.loads(Path(spec_path).read_text())
    folder = shipped_bundle_for(bytes.fromhex(spec["model_id"]))
    if folder is None:
        pytest.skip(f"the golden {what} streams belong to a bundle no longer shipped")
    bundle = load_bundle(folder)
    assert bytes.fromhex(spec["model_id"]) in bundle.model_ids  # its id and the legacy one streams may carry
    return spec, bundle.model_ids, load_codec(bundle, kernels=kernels)[1]
