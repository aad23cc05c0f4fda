"""Start-up of a one-file decode: it imports only what decoding runs and walks only the graphs a decode
may run; the encoder graph is checked when an encode first needs it, with the message a full load gives."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest

from edge_runtime import bitstream as bs
from edge_runtime import bundle as bundle_mod
from edge_runtime import cli, runtime
from edge_runtime.bundle import DECODE_GRAPHS, InvalidBundleError, default_bundle_path, load_bundle

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
ROOT = Path(__file__).resolve().parents[2]

NOT_FOR_DECODING = ("edge_runtime.series", "edge_runtime.frames", "edge_runtime.batch", "edge_runtime.cluster",
                    "edge_runtime.pool", "data.readers", "data.corpus", "data.pipeline", "cv2")
"""Modules a lossy DICOM-to-DICOM decode of one file does not run: reading images, series, folders."""


def test_one_file_decode_imports_and_walks_only_what_it_runs(tmp_path):
    """`edge-codec decode` of a lossy CT stream to DICOM, in a fresh interpreter: the modules that read
    images, code series or folders stay unimported, and the encoder graph is never walked."""
    out = tmp_path / "ct.dcm"
    code = textwrap.dedent(f"""
        import hashlib, sys
        from edge_runtime import bundle, cli
        rc = cli.main(["decode", {str(GOLDEN / "ct_small_q14.kcd")!r}, {str(out)!r}])
        encoder = hashlib.sha256((bundle.default_bundle_path() / "encoder.tflite").read_bytes()).digest()
        decoder = hashlib.sha256((bundle.default_bundle_path() / "decoder.tflite").read_bytes()).digest()
        print(rc, sorted(m for m in {NOT_FOR_DECODING!r} if m in sys.modules),
              encoder in bundle._SIGNATURES, decoder in bundle._SIGNATURES)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "0 [] False True", r.stdout + r.stderr
    ds = pydicom.dcmread(out)
    assert ds.Rows == 128 and ds.LossyImageCompression == "01"


def test_data_package_loads_readers_and_writers_when_named():
    code = textwrap.dedent("""
        import sys
        import data.image
        before = sorted(m for m in ("data.readers", "data.writers") if m in sys.modules)
        from data import MAX_IMAGE_BYTES, read_image, write_png
        import data
        print(before, read_image is sys.modules["data.readers"].read_image, "write_tiff" in dir(data))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[] True True"
    import data

    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        data.no_such_name  # noqa: B018


@pytest.fixture()
def broken_encoder(bundle_path, synthetic_dcm, tmp_path):
    """(bundle with a garbage encoder.tflite, a lossy stream carrying that bundle's model id, the same stream
    as the intact bundle made it). A damaged file changes the model id, so a stream naming the damaged
    bundle is the original one re-labelled (what a decode-only copy of the bundle would be given)."""
    folder = tmp_path / "bundle"
    shutil.copytree(bundle_path, folder)
    target = folder / "encoder.tflite"
    target.write_bytes(np.random.default_rng(0).integers(0, 256, target.stat().st_size, np.uint8).tobytes())
    original = tmp_path / "original.kcd"
    runtime.encode_file(synthetic_dcm, original, quality=12, bundle=bundle_path, jobs=1)
    header, tiles, metadata = bs.parse(original.read_bytes())
    header.model_id = bundle_mod.model_id_of(folder)
    relabelled = tmp_path / "relabelled.kcd"
    relabelled.write_bytes(bs.pack(header, tiles, metadata))
    return folder, relabelled, original


def test_a_broken_encoder_graph_still_decodes(broken_encoder, bundle_path, tmp_path):
    folder, relabelled, original = broken_encoder
    runtime.decode_file(relabelled, tmp_path / "damaged.dcm", bundle=folder, jobs=1)
    runtime.decode_file(original, tmp_path / "intact.dcm", bundle=bundle_path, jobs=1)
    assert np.array_equal(pydicom.dcmread(tmp_path / "damaged.dcm").pixel_array,
                          pydicom.dcmread(tmp_path / "intact.dcm").pixel_array)
    assert runtime.verify(relabelled, bundle=folder)["ok"]
    b = load_bundle(folder, graphs=DECODE_GRAPHS)
    b.check_graphs(DECODE_GRAPHS)  # the graphs a decode runs are sound


def test_a_broken_encoder_graph_is_refused_when_encoding(broken_encoder, synthetic_dcm, tmp_path, capsys):
    folder, _, _ = broken_encoder
    with pytest.raises(InvalidBundleError) as full:
        load_bundle(folder)
    message = str(full.value)
    assert message.startswith(f"{folder}: encoder.tflite: not a TFLite model")
    b = load_bundle(folder, graphs=DECODE_GRAPHS)
    with pytest.raises(InvalidBundleError) as lazy:
        b.check_graphs()
    assert str(lazy.value) == message
    out = tmp_path / "x.kcd"
    for bundle in (folder, runtime.load_codec(load_bundle(folder, graphs=DECODE_GRAPHS))):
        with pytest.raises(InvalidBundleError) as enc:
            runtime.encode_file(synthetic_dcm, out, quality=12, bundle=bundle, jobs=1)
        assert str(enc.value) == message
        assert not out.exists()
    assert cli.main(["encode", str(synthetic_dcm), str(out), "--bundle", str(folder), "--jobs", "1"]) == 1
    assert capsys.readouterr().err.strip() == f"edge-codec encode: error: {synthetic_dcm}: {message}"
    assert not out.exists()


def test_a_stream_of_the_intact_bundle_names_the_broken_graph(broken_encoder, tmp_path):
    """A stream made before the damage carries the intact bundle's id: the decode is refused as a full load
    refuses the bundle (naming encoder.tflite), not as a stream from another model."""
    folder, _, original = broken_encoder
    with pytest.raises(InvalidBundleError, match=f"{folder}: encoder.tflite: not a TFLite model"):
        runtime.decode_file(original, tmp_path / "x.dcm", bundle=folder, jobs=1)
    with pytest.raises(InvalidBundleError, match="encoder.tflite: not a TFLite model"):
        runtime.verify(original, bundle=folder)
    assert not (tmp_path / "x.dcm").exists()


def test_a_broken_decode_graph_is_refused_when_decoding(bundle_path, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(bundle_path, folder)
    (folder / "decoder.tflite").write_bytes((folder / "decoder.tflite").read_bytes()[:1000])
    with pytest.raises(InvalidBundleError, match=f"{folder}: decoder.tflite: not a TFLite model"):
        load_bundle(folder, graphs=DECODE_GRAPHS)


def test_graph_walk_reads_the_shipped_graphs():
    """The signatures of every shipped graph, as the manifest lists them (the walk reads through views)."""
    b = load_bundle(default_bundle_path())
    listed = sorted(b.manifest["tflite"]["signatures"])
    for name in ("encoder.tflite", "decoder.tflite"):
        data = (default_bundle_path() / name).read_bytes()
        assert sorted(bundle_mod.tflite_signatures(data)) == listed
        assert hashlib.sha256(data).digest() in bundle_mod._SIGNATURES
    assert bundle_mod.tflite_signatures((default_bundle_path() / "postfilter.tflite").read_bytes()) == ["postfilter"]
