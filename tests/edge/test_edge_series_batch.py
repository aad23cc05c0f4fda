"""Series in batch mode (edge_runtime.batch): with --series each subfolder of DIR is one task and
one stream; a series stream decodes to a folder of slices; resuming knows a complete series folder; on a Dask
cluster a series is one task too, with the local batch's outputs byte for byte."""
from __future__ import annotations

import sys
from pathlib import Path

import pydicom
import pytest

from edge_runtime import batch, series
from edge_runtime.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_edge_series import make_series  # noqa: E402

Q = ["--quality", "10"]


@pytest.fixture
def studies(tmp_path) -> Path:
    """Two series (3 and 4 slices), one folder mixing two series, and a file directly in the root."""
    root = tmp_path / "in"
    make_series(root / "ct_a", n=3, seed=1)
    make_series(root / "ct_b", n=4, seed=2)
    make_series(root / "mixed", n=3, seed=3, odd=(1, {"SeriesInstanceUID": "1.2.3.4"}))
    (root / "loose.dcm").write_bytes((root / "ct_a" / next(iter(sorted(p.name for p in (root / "ct_a").iterdir())))
                                      ).read_bytes())
    return root


def _outputs(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (batch.SUMMARY_NAME, batch.LOCK_NAME)}


def test_each_subfolder_is_one_series_task(studies, tmp_path, bundle_path):
    out = tmp_path / "kcd"
    s = batch.encode_folder(studies, out, series=True, encode_options={"quality": 10}, jobs=1,
                            bundle=str(bundle_path))
    assert (s["total"], s["ok"], s["failed"]) == (3, 2, 1) and s["series"] is True
    rows = {r["input"]: r for r in s["files"]}
    assert set(rows) == {"ct_a", "ct_b", "mixed"}  # loose.dcm, directly in DIR, is no series
    assert (rows["ct_a"]["output"], rows["ct_a"]["slices"], rows["ct_b"]["slices"]) == ("ct_a.kcd", 3, 4)
    assert rows["ct_b"]["bytes_in"] == sum(p.stat().st_size for p in (studies / "ct_b").iterdir())
    assert "Series Instance UID" in rows["mixed"]["reason"]
    assert sorted(_outputs(out)) == ["ct_a.kcd", "ct_b.kcd"]
    assert batch.encode_folder(studies, out, series=True, encode_options={"quality": 10}, jobs=1,
                               bundle=str(bundle_path))["skipped"] == 2  # resumed: both streams are complete


def test_series_streams_decode_to_folders_and_resume(studies, tmp_path, bundle_path):
    kcd, dcm = tmp_path / "kcd", tmp_path / "dcm"
    batch.encode_folder(studies, kcd, series=True, encode_options={"quality": 10}, jobs=1, bundle=str(bundle_path))
    s = batch.decode_folder(kcd, dcm, jobs=2, bundle=str(bundle_path))
    assert (s["ok"], s["failed"], s["worker_processes"]) == (2, 0, 2)
    names_a = series.output_names(sorted(p.name for p in (studies / "ct_a").iterdir()))
    assert sorted(_outputs(dcm)) == sorted([f"ct_a/{n}" for n in names_a] + [
        f"ct_b/{n}" for n in series.output_names(sorted(p.name for p in (studies / "ct_b").iterdir()))])
    rows = {r["input"]: r for r in s["files"]}
    assert rows["ct_a.kcd"]["output"] == "ct_a" and rows["ct_a.kcd"]["slices"] == 3
    assert rows["ct_a.kcd"]["bytes_out"] == sum(p.stat().st_size for p in (dcm / "ct_a").iterdir())
    assert pydicom.dcmread(dcm / "ct_a" / names_a[0]).Modality == "CT"

    (dcm / "ct_a" / names_a[1]).unlink()  # a series folder left incomplete is done again, the other skipped
    again = batch.decode_folder(kcd, dcm, jobs=1, bundle=str(bundle_path))
    assert {r["input"]: r["status"] for r in again["files"]} == {"ct_a.kcd": "ok", "ct_b.kcd": "skipped"}
    assert (dcm / "ct_a" / names_a[1]).is_file()


def test_cli_series_batch_and_tif(studies, tmp_path, bundle_path, capsys):
    kcd = tmp_path / "kcd"
    rc = main(["encode", "--series", str(studies), str(kcd), *Q, "--jobs", "1", "--bundle", str(bundle_path)])
    assert rc == 1 and "mixed" in capsys.readouterr().err  # one series failed: reported, the others coded
    assert sorted(_outputs(kcd)) == ["ct_a.kcd", "ct_b.kcd"]
    tif = tmp_path / "tif"
    assert main(["decode", str(kcd), str(tif), "--format", "tif", "--jobs", "1", "--bundle", str(bundle_path)]) == 0
    assert sorted(_outputs(tif)) == ["ct_a.tif", "ct_b.tif"]


def test_a_series_is_one_task_on_a_dask_cluster(studies, tmp_path, bundle_path):
    distributed = pytest.importorskip("distributed")
    local, remote = tmp_path / "local", tmp_path / "remote"
    options = {"quality": 10}
    batch.encode_folder(studies, local, series=True, encode_options=options, jobs=1, bundle=str(bundle_path))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as c:
        s = batch.encode_folder(studies, remote, series=True, encode_options=options, bundle=str(bundle_path),
                                scheduler=c.scheduler_address)
        assert (s["total"], s["ok"], s["failed"]) == (3, 2, 1)
        assert {p.name: p.read_bytes() for p in remote.glob("*.kcd")} == {
            p.name: p.read_bytes() for p in local.glob("*.kcd")}
        d = batch.decode_folder(remote, tmp_path / "slices", bundle=str(bundle_path), scheduler=c.scheduler_address)
        assert d["ok"] == 2 and len(list((tmp_path / "slices" / "ct_b").glob("*.dcm"))) == 4
