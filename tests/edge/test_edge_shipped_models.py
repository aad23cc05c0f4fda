"""A new default model keeps the streams of the earlier ones decodable: the default decoder (no bundle given, or the
default loaded once as batch workers hold it) takes a stream of an earlier default shipped beside it
(edge_runtime/models/<name>) with that bundle; a bundle given by its path decodes its own streams only.

Here the shipped models folder is a temporary one: 'earlier' is the shipped bundle that wrote the golden stream, as it
is, and 'default' that bundle with one manifest key added (another model id, the same coding)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import batch
from edge_runtime import bitstream as bs
from edge_runtime import bundle as bundle_mod
from edge_runtime import runtime
from edge_runtime.bundle import load_bundle

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
STREAM = GOLDEN / "ct_small_q14.kcd"
SHIPPED = bundle_mod.shipped_bundle_for(bs.stream_model_id(STREAM.read_bytes()))
"""The shipped bundle that wrote the golden stream (the default, or an earlier one kept beside it)."""


@pytest.fixture()
def models(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "models"
    shutil.copytree(SHIPPED, root / "earlier")
    new = shutil.copytree(SHIPPED, root / "default")
    manifest = json.loads((new / "manifest.json").read_text())
    manifest["release_note"] = "a later default"
    (new / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    monkeypatch.setattr(bundle_mod, "MODELS_DIR", root)
    return root


def _pixels(path: Path) -> np.ndarray:
    from data.readers import read_image

    return read_image(path).pixels


def test_stream_model_id_reads_the_header():
    data = STREAM.read_bytes()
    assert bs.stream_model_id(data) == bs.parse(data)[0].model_id
    assert bs.stream_model_id(data[:20]) is None
    assert bs.stream_model_id(b"PK" + data[2:]) is None


def test_shipped_bundles_default_first(models):
    assert bundle_mod.shipped_bundle_paths() == [models / "default", models / "earlier"]
    stream_id = bs.stream_model_id(STREAM.read_bytes())
    assert stream_id not in load_bundle(models / "default").model_ids  # the test's premise
    assert bundle_mod.shipped_bundle_for(stream_id) == models / "earlier"
    assert bundle_mod.shipped_bundle_for(bytes(32)) is None


def test_default_decoder_takes_an_earlier_defaults_stream(models, tmp_path):
    expected = tmp_path / "expected.tif"
    runtime.decode_file(STREAM, expected, bundle=SHIPPED)
    out = tmp_path / "by_default.tif"
    runtime.decode_file(STREAM, out)  # no bundle: the default, which hands it to 'earlier'
    assert np.array_equal(_pixels(out), _pixels(expected))
    assert runtime.verify(STREAM)["ok"]
    info = runtime.info(STREAM)
    assert info["model_known"] is True and Path(info["bundle"]) == models / "earlier"


def test_a_bundle_given_by_path_decodes_only_its_own(models, tmp_path):
    with pytest.raises(bs.InvalidBitstreamError, match="made by model"):
        runtime.decode_file(STREAM, tmp_path / "x.tif", bundle=models / "default")


def test_loaded_default_pair_switches_once(models, tmp_path):
    """As a batch worker holds it: the default loaded once; the earlier bundle is loaded once beside it, with the
    same kernels and threads."""
    pair = runtime.load_codec(None, kernels="reference", num_threads=1)
    data = STREAM.read_bytes()
    first = runtime._codec(pair, "xnnpack", data, STREAM)
    assert first[0].path == models / "earlier" and first[1].loaded_with == ("reference", 1)
    assert runtime._codec(pair, "xnnpack", data, STREAM) is first
    expected = tmp_path / "expected.tif"
    runtime.decode_file(STREAM, expected, bundle=SHIPPED, kernels="reference")
    out = tmp_path / "pair.tif"
    runtime.decode_file(STREAM, out, bundle=pair)
    assert np.array_equal(_pixels(out), _pixels(expected))


def test_batch_decodes_streams_of_both_defaults(models, tmp_path, synthetic_dcm):
    folder = tmp_path / "kcd"
    folder.mkdir()
    shutil.copy(STREAM, folder / "earlier.kcd")
    runtime.encode_file(synthetic_dcm, folder / "new.kcd", quality=14)
    assert bs.stream_model_id((folder / "new.kcd").read_bytes()) in load_bundle(models / "default").model_ids
    summary = batch.decode_folder(folder, tmp_path / "out", fmt="tif", jobs=1)
    assert summary["ok"] == 2 and summary["failed"] == 0
    expected = tmp_path / "expected.tif"
    runtime.decode_file(STREAM, expected, bundle=SHIPPED)
    assert np.array_equal(_pixels(tmp_path / "out" / "earlier.tif"), _pixels(expected))


def test_a_model_not_shipped_is_still_refused(models, tmp_path):
    shutil.rmtree(models / "earlier")
    with pytest.raises(bs.InvalidBitstreamError, match="made by model"):
        runtime.decode_file(STREAM, tmp_path / "x.tif")
    assert runtime.info(STREAM)["model_known"] is False


def test_plane_workers_take_the_earlier_bundle(models, tmp_path):
    """A multi-frame stream of an earlier default decoded with plane worker processes: they load that bundle."""
    stream = GOLDEN / "frames_cine_q14.kcd"
    assert bundle_mod.shipped_bundle_for(bs.stream_model_id(stream.read_bytes())) == models / "earlier"
    expected = tmp_path / "expected.tif"
    runtime.decode_file(stream, expected, bundle=SHIPPED, jobs=1)
    out = tmp_path / "pool.tif"
    runtime.decode_file(stream, out, jobs=2)
    assert np.array_equal(_pixels(out), _pixels(expected))
