"""Bundles: the model id covers every byte coding depends on, the legacy id is an
alias only where it names one bundle, and a bundle is validated when it is loaded."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import bitstream as bs
from edge_runtime import bundle as bundle_mod
from edge_runtime import runtime
from edge_runtime.bundle import InvalidBundleError, default_bundle_path, load_bundle

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
LEGACY_SHIPPED_ID = json.loads((GOLDEN / "edge_streams.json").read_text())["model_id"]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _with_refine_file(folder: Path, name: str, scale: float = 1.0) -> Path:
    """The bundle with its refinement weights under another name (the manifest pointing there), scaled."""
    manifest = json.loads((folder / "manifest.json").read_text())
    with np.load(folder / manifest["refine"]["file"]) as z:
        arrays = {k: z[k] * scale if k.startswith("w") and int(k[1:]) % 2 == 0 else z[k] for k in z.files}
    (folder / manifest["refine"]["file"]).unlink()
    np.savez(folder / name, **arrays)
    manifest["refine"]["file"] = name
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return folder


@pytest.fixture(scope="module")
def refined_pair(tmp_path_factory):
    """Two copies of the shipped bundle with the same manifest, `refine.file` = weights.npz, whose
    weights differ: the first id hashed fixed names only, so both had one id."""
    root = tmp_path_factory.mktemp("bundles")
    a = _with_refine_file(_copy(default_bundle_path(), root / "a"), "weights.npz")
    b = _with_refine_file(_copy(default_bundle_path(), root / "b"), "weights.npz", scale=3.0)
    return a, b


def test_model_id_covers_the_weight_file_the_manifest_names(refined_pair, ct_dcm, tmp_path):
    a, b = refined_pair
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    assert bundle_mod.legacy_model_id_of(a) == bundle_mod.legacy_model_id_of(b)  # the old defect
    ba, bb = load_bundle(a), load_bundle(b)
    assert ba.model_id != bb.model_id
    kcd = tmp_path / "a.kcd"
    runtime.encode_file(ct_dcm, kcd, quality=12, bundle=a, jobs=1)
    with pytest.raises(bs.InvalidBitstreamError, match="made by model"):
        runtime.decode_file(kcd, tmp_path / "b.dcm", bundle=b, jobs=1)
    runtime.decode_file(kcd, tmp_path / "a.dcm", bundle=a, jobs=1)


def test_old_streams_of_the_shipped_bundle_still_decode(tmp_path):
    """The shipped bundle's files all have the first computation's fixed names, so its legacy id names it
    alone: the golden streams (made before the new id) decode, verify and are 'known' to info."""
    shipped = load_bundle(default_bundle_path())
    assert shipped.model_id.hex() != LEGACY_SHIPPED_ID and shipped.legacy_model_id.hex() == LEGACY_SHIPPED_ID
    stream = GOLDEN / "ct_small_q14.kcd"
    assert bs.parse(stream.read_bytes())[0].model_id.hex() == LEGACY_SHIPPED_ID
    runtime.decode_file(stream, tmp_path / "old.dcm", jobs=1)
    assert runtime.verify(stream)["ok"] and runtime.info(stream)["model_known"] is True


def test_legacy_id_refused_where_it_is_ambiguous(refined_pair, ct_dcm, tmp_path):
    """A stream carrying the legacy id of bundles whose refinement lives outside the fixed names could come
    from either of them (they shared it): neither decodes it, rather than decode it to other pixels."""
    a, b = refined_pair
    assert load_bundle(a).legacy_model_id is None and load_bundle(b).legacy_model_id is None
    kcd = tmp_path / "new.kcd"
    runtime.encode_file(ct_dcm, kcd, quality=12, bundle=a, jobs=1)
    header, tiles, meta = bs.parse(kcd.read_bytes())
    header.model_id = bundle_mod.legacy_model_id_of(a)  # what the old encoder wrote
    old = tmp_path / "old.kcd"
    old.write_bytes(bs.pack(header, tiles, meta))
    for folder in (a, b):
        with pytest.raises(bs.InvalidBitstreamError, match="made by model"):
            runtime.decode_file(old, tmp_path / f"{folder.name}.dcm", bundle=folder, jobs=1)


@pytest.mark.parametrize("damage, file, message", [
    ("garbage", "decoder.tflite", "not a TFLite model"),
    ("truncate", "context.npz", "truncated or not a numpy archive"),
    ("truncate", "refine.npz", "truncated or not a numpy archive"),
    ("truncate", "postfilter.tflite", "not a TFLite model"),
    ("remove", "residual.npz", "is missing"),
])
def test_damaged_bundle_is_refused_when_loaded(damage, file, message, ct_dcm, tmp_path):
    folder = _copy(default_bundle_path(), tmp_path / "bundle")
    target = folder / file
    if damage == "garbage":
        target.write_bytes(np.random.default_rng(0).integers(0, 256, target.stat().st_size, np.uint8).tobytes())
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        target.unlink()
    with pytest.raises(InvalidBundleError, match=f"{folder}: {file}.*{message}|{folder}: {file} {message}"):
        load_bundle(folder)
    with pytest.raises(InvalidBundleError, match=file):  # before any encoding
        runtime.encode_file(ct_dcm, tmp_path / "x.kcd", bundle=folder, jobs=1)
    assert not (tmp_path / "x.kcd").exists()


def test_missing_graph_says_to_export_before_encoding(ct_dcm, tmp_path):
    folder = _copy(default_bundle_path(), tmp_path / "bundle")
    (folder / "postfilter.tflite").unlink()
    with pytest.raises(InvalidBundleError, match=f"{folder}: the bundle has no postfilter.tflite.*export"):
        runtime.encode_file(ct_dcm, tmp_path / "x.kcd", bundle=folder, jobs=1)
    assert not (tmp_path / "x.kcd").exists()


def test_manifest_names_must_stay_inside_the_bundle(tmp_path):
    folder = _copy(default_bundle_path(), tmp_path / "bundle")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["refine"]["file"] = "../refine.npz"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidBundleError, match="plain file name inside the bundle"):
        load_bundle(folder)


def test_graph_without_a_listed_signature_is_refused(bundle_path, tmp_path):
    folder = _copy(bundle_path, tmp_path / "bundle")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["tflite"]["signatures"] = manifest["tflite"]["signatures"] + ["cdf97_L9"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidBundleError, match="encoder.tflite: lacks the signature.*cdf97_L9"):
        load_bundle(folder)


def test_cli_names_the_bundle_file_not_an_internal_error(ct_dcm, tmp_path):
    folder = _copy(default_bundle_path(), tmp_path / "bundle")
    (folder / "context.npz").write_bytes((folder / "context.npz").read_bytes()[:100])
    r = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "encode", str(ct_dcm), str(tmp_path / "x.kcd"),
                        "--bundle", str(folder)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "internal error" not in r.stderr and "context.npz" in r.stderr and str(folder) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_signature_reader_refuses_garbage():
    for data in (b"", b"TFL3", b"\x00" * 4 + b"TFL3" + b"\xff" * 8, b"\x10\x00\x00\x00TFL3"):
        with pytest.raises(ValueError):
            bundle_mod.tflite_signatures(data)


def test_signature_reader_on_damaged_graphs():
    """Truncated or bit-flipped graphs give the signatures or a ValueError, never another exception."""
    from hypothesis import given, settings, strategies as st

    data = (default_bundle_path() / "postfilter.tflite").read_bytes()
    assert bundle_mod.tflite_signatures(data) == ["postfilter"]

    @settings(max_examples=200, deadline=None)
    @given(cut=st.integers(0, len(data)), flips=st.lists(st.tuples(st.integers(0, len(data) - 1),
                                                                    st.integers(1, 255)), max_size=4))
    def check(cut, flips):
        damaged = bytearray(data)
        for at, x in flips:
            damaged[at] ^= x
        try:
            keys = bundle_mod.tflite_signatures(bytes(damaged[:cut]))
        except ValueError:
            return
        assert isinstance(keys, list)

    check()
