"""Fixtures for the edge runtime tests, which must run without TensorFlow and without keras_codec.

`make test` runs this folder twice: in the workstation venv and in .venv-edge (only
edge_runtime/requirements.txt installed, KERAS_CODEC_EDGE_VENV=1). When a session runs only
these tests, it fails if anything imported tensorflow or keras_codec along the way.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
BUNDLE = HERE / "data" / "bundle"
FORBIDDEN = ("tensorflow", "keras", "keras_codec")


@pytest.fixture(autouse=True)
def full_lossless_decodes(monkeypatch):
    """Every decode of a lossless tile without a base decodes it, even one that a lossless encode has just checked
    (edge_runtime.direct.LosslessCheck, whose own tests turn that shortcut back on): round trips test the decoder."""
    from edge_runtime import direct

    monkeypatch.setattr(direct, "_CHECKED_KEPT", 0)


@pytest.fixture(scope="session")
def bundle_path() -> Path:
    return BUNDLE


@pytest.fixture(scope="session")
def codec():
    """The test bundle and a coder over its TFLite graphs (XNNPACK kernels), loaded once."""
    from edge_runtime.runtime import load_codec

    return load_codec(BUNDLE)


@pytest.fixture(scope="session")
def exact_coder():
    """The shipped model's context model, tables and residual model over numpy transforms (any size), without the
    refinement: (bundle, PlaneCoder)."""
    from edge_runtime import exact_dwt
    from edge_runtime.bundle import default_bundle_path, load_bundle
    from edge_runtime.codec import PlaneCoder

    b = load_bundle(default_bundle_path())
    assert b.residual is not None, "the shipped bundle must carry a residual model"
    p = b.manifest["codec"]
    transforms = {n: exact_dwt.ExactTransforms(n, p["mode"]) for n in p["transforms"]}
    return b, PlaneCoder(p, b.coding, transforms, b.residual)


@pytest.fixture(scope="session")
def synthetic_dcm(tmp_path_factory) -> Path:
    """A 40x56 12-bit MONOCHROME2 image (smooth gradient + disc + noise) as a Secondary Capture DICOM."""
    from data.image import Image
    from data.writers import write_dicom

    rng = np.random.default_rng(7)
    r, c = np.mgrid[0:40, 0:56]
    x = 600 + 25 * r + 18 * c + 900 * ((r - 20) ** 2 + (c - 30) ** 2 < 120) + rng.normal(0, 6, (40, 56))
    pixels = np.clip(np.round(x), 0, 4095).astype(np.uint16)[None, :, :, None]
    path = tmp_path_factory.mktemp("src") / "synthetic12.dcm"
    write_dicom(path, Image(pixels=pixels, bits_stored=12, signed=False, modality="OT"))
    return path


@pytest.fixture(scope="session")
def ct_dcm() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm"))


def pytest_sessionfinish(session, exitstatus):
    items = getattr(session, "items", None) or []
    if not items or not all(HERE in Path(str(i.path)).resolve().parents for i in items):
        return  # a mixed session: other tests import TensorFlow on purpose
    leaked = [m for m in FORBIDDEN if m in sys.modules]
    if leaked:
        sys.stderr.write(f"\nedge tests imported {', '.join(leaked)}: the edge runtime must not need them\n")
        session.exitstatus = 1
