"""Model bundle: a directory with manifest.json, the integer context model, the integer tables
and (once exported) the TFLite graphs. Its model id is the SHA-256 of those files.

    manifest.json   format version, config, quality table, levels, tile size, training run
    context.npz     integer context weights (detail, ll)
    tables.npz      integer entropy tables (freqs, lengths, tails)
    residual.npz    integer residual model of the error-bounded / lossless mode (optional)
    refine.npz      learned lifting refinement of the wavelet (optional; manifest `refine`)
    *.tflite        analysis / synthesis graphs (optional; the workstation may use Keras instead);
                    postfilter.tflite is an int8 bundle's full-integer post-filter
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.context import ContextWeights
from edge_runtime.entropy import EntropyTables
from edge_runtime.refine import REFINE_FILE, ExactRefinement
from edge_runtime.residual import RESIDUAL_FILE, ResidualModel
from edge_runtime.subband_coder import CodingModel

BUNDLE_FORMAT = 1
_HASHED = ("manifest.json", "context.npz", "tables.npz", "residual.npz", "postfilter.npz", "refine.npz",
           "encoder.tflite", "hyper_decoder.tflite", "decoder.tflite", "postfilter.tflite")


class InvalidBundleError(ValueError):
    """A model bundle that is missing files or does not parse."""


@dataclass
class Bundle:
    path: Path
    manifest: dict
    coding: CodingModel
    model_id: bytes
    residual: ResidualModel | None = None
    refine: ExactRefinement | None = None


def model_id_of(folder: Path) -> bytes:
    h = hashlib.sha256()
    for name in _HASHED:
        p = folder / name
        if p.exists():
            h.update(name.encode() + b"\0")
            h.update(p.read_bytes())
    return h.digest()


def save_bundle(folder, manifest: dict, weights: ContextWeights, tables: EntropyTables,
                extra_files: dict | None = None) -> bytes:
    """Write a bundle directory and return its model id."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"format": BUNDLE_FORMAT, **manifest}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    np.savez_compressed(folder / "context.npz", **weights.to_arrays())
    np.savez_compressed(folder / "tables.npz", **tables.to_arrays())
    for name, data in (extra_files or {}).items():
        (folder / name).write_bytes(data)
    return model_id_of(folder)


def load_bundle(folder) -> Bundle:
    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        raise InvalidBundleError(f"{folder}: not a model bundle (no manifest.json)")
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        with np.load(folder / "context.npz") as z:
            weights = ContextWeights.from_arrays(z)
        with np.load(folder / "tables.npz") as z:
            tables = EntropyTables.from_arrays(z)
        residual = None
        if (folder / RESIDUAL_FILE).is_file():
            with np.load(folder / RESIDUAL_FILE) as z:
                residual = ResidualModel.from_arrays(z)
        refine = None
        entry = manifest.get("refine")
        if entry:
            refine = ExactRefinement.load(folder / entry.get("file", REFINE_FILE), int(entry["layers"]),
                                          int(entry["max_levels"]), entry["wavelet"])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InvalidBundleError(f"{folder}: damaged model bundle: {exc}") from exc
    if manifest.get("format") != BUNDLE_FORMAT:
        raise InvalidBundleError(f"{folder}: bundle format {manifest.get('format')}, this runtime reads {BUNDLE_FORMAT}")
    return Bundle(folder, manifest, CodingModel(weights, tables), model_id_of(folder), residual, refine)


def default_bundle_path() -> Path:
    """The bundle shipped inside edge_runtime, so `edge-codec` works right after install."""
    return Path(__file__).resolve().parent / "models" / "default"
