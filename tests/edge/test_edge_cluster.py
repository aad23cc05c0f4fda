"""`edge-codec encode|decode DIR OUTDIR --scheduler ...`: the batch on a Dask cluster gives the local
batch's outputs byte for byte, resumes, reports a bad file, survives a killed worker and, with no scheduler to
reach, writes nothing. LocalClusters of worker processes on 127.0.0.1 only."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from data.image import Image  # noqa: E402
from data.writers import write_dicom  # noqa: E402
from edge_runtime import batch, cluster  # noqa: E402
from edge_runtime import bitstream as bs  # noqa: E402
from edge_runtime.cli import main  # noqa: E402

Q = 6


def _images(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` small 12-bit DICOMs, half of them in a subfolder."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        r, c = np.mgrid[0:40, 0:56]
        px = (600 + 25 * r + 18 * c + rng.normal(0, 30, r.shape)).clip(0, 4095).astype(np.uint16)[None, :, :, None]
        sub = folder / ("sub" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        write_dicom(sub / f"im{i:03d}.dcm", Image(pixels=px, bits_stored=12, signed=False))


def _outputs(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (batch.SUMMARY_NAME, batch.LOCK_NAME)}


def _rows(summary: dict) -> list:
    keep = ("input", "output", "status", "bytes_in", "bytes_out", "bpp", "cr", "reason")
    return [{k: r.get(k) for k in keep} for r in summary["files"]]


@pytest.fixture(scope="module")
def dask_cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as c:
        yield c


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "in"
    _images(root, 6)
    (root / "sub" / "bad.dcm").write_text("not an image\n" * 20)
    return root


def test_cluster_matches_local_batch_and_resumes(tree, tmp_path, bundle_path, dask_cluster):
    address = dask_cluster.scheduler_address
    local = batch.encode_folder(tree, tmp_path / "local", encode_options={"quality": Q}, jobs=1, bundle=bundle_path)
    seen = []
    remote = batch.encode_folder(tree, tmp_path / "dask", encode_options={"quality": Q}, bundle=bundle_path,
                                 scheduler=address, on_file=lambda record, snap: seen.append(snap["done"]))
    got = _outputs(tmp_path / "dask")
    assert got == _outputs(tmp_path / "local") and len(got) == 6 and all(k.endswith(".kcd") for k in got)
    assert _rows(remote) == _rows(local)
    assert (remote["ok"], remote["skipped"], remote["failed"]) == (6, 0, 1)
    assert remote["failures"][0]["input"] == "sub/bad.dcm"
    written = json.loads((tmp_path / "dask" / batch.SUMMARY_NAME).read_text())
    assert written["cluster_workers"] == 2 and written["scheduler"] == address and written["ok"] == 6
    assert seen == list(range(1, 8))  # progress on the client, one call per file
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "dask").rglob("*"))

    again = batch.encode_folder(tree, tmp_path / "dask", encode_options={"quality": Q}, bundle=bundle_path,
                                scheduler=address)
    assert (again["ok"], again["skipped"], again["failed"]) == (0, 6, 1)
    assert _outputs(tmp_path / "dask") == got

    # PNG: a decoded DICOM gets a fresh SOP Instance UID when its source had none, so it differs run to run
    dl = batch.decode_folder(tmp_path / "local", tmp_path / "dec_local", fmt="png", jobs=1, bundle=bundle_path)
    dd = batch.decode_folder(tmp_path / "dask", tmp_path / "dec_dask", fmt="png", bundle=bundle_path,
                             scheduler=address)
    assert dd["ok"] == dl["ok"] == 6 and _rows(dd) == _rows(dl)
    assert _outputs(tmp_path / "dec_dask") == _outputs(tmp_path / "dec_local")


def test_interrupted_client_rerun_resumes(tree, tmp_path, bundle_path, dask_cluster):
    """Ctrl-C on the client: the summary says so; the same call again does only what is left."""
    address, out = dask_cluster.scheduler_address, tmp_path / "dask"

    def stop(record, snap):
        if snap["done"] == 3:
            raise KeyboardInterrupt

    first = batch.encode_folder(tree, out, encode_options={"quality": Q}, bundle=bundle_path, scheduler=address,
                                on_file=stop)
    assert first["interrupted"] and first["interrupted_by"] == "SIGINT"
    again = batch.encode_folder(tree, out, encode_options={"quality": Q}, bundle=bundle_path, scheduler=address)
    assert not again["interrupted"] and again["ok"] + again["skipped"] == 6 and again["skipped"] >= 2
    batch.encode_folder(tree, tmp_path / "local", encode_options={"quality": Q}, jobs=1, bundle=bundle_path)
    assert _outputs(out) == _outputs(tmp_path / "local")


def test_cli_local_n(tree, tmp_path, bundle_path, capsys):
    args = ["--bundle", str(bundle_path), "--quality", str(Q)]
    assert main(["encode", str(tree), str(tmp_path / "local"), "--jobs", "1"] + args) == 1
    assert main(["encode", str(tree), str(tmp_path / "dask"), "--scheduler", "local:1"] + args) == 1
    out = capsys.readouterr()
    assert "6 ok, 0 skipped, 1 failed" in out.out and "Dask cluster local:1" in out.out
    assert "Traceback" not in out.err
    assert _outputs(tmp_path / "dask") == _outputs(tmp_path / "local")
    assert main(["encode", str(tree / "im000.dcm"), str(tmp_path / "x.kcd"), "--scheduler", "local:1"] + args) == 1
    assert "--scheduler codes folders" in capsys.readouterr().err
    assert main(["encode", str(tree), str(tmp_path / "dask2"), "--scheduler", "local:1", "--jobs", "2"] + args) == 1
    assert "--jobs is ignored with --scheduler" in capsys.readouterr().err


def test_scheduler_unreachable_writes_nothing(tree, tmp_path, bundle_path, monkeypatch, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 1.0)
    out = tmp_path / "out"
    with pytest.raises(ConnectionError, match="cannot reach the Dask scheduler"):
        batch.encode_folder(tree, out, bundle=bundle_path, scheduler=f"tcp://127.0.0.1:{port}")
    assert not out.exists()
    assert main(["encode", str(tree), str(out), "--bundle", str(bundle_path),
                 "--scheduler", f"tcp://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Dask scheduler" in err[0] and "nothing was written" in err[0]
    assert not out.exists()


def test_bad_scheduler_arguments(tree, tmp_path, bundle_path, codec):
    with pytest.raises(ValueError, match="local:N"):
        batch.encode_folder(tree, tmp_path / "o", bundle=bundle_path, scheduler="local:zero")
    with pytest.raises(ValueError, match="cannot be sent to cluster workers"):
        batch.encode_folder(tree, tmp_path / "o", bundle=codec, scheduler="local:1")
    assert not (tmp_path / "o").exists()


def test_scheduler_file(tree, tmp_path, bundle_path, dask_cluster):
    """A scheduler file (what dask-jobqueue and `dask scheduler --scheduler-file` write) instead of an address."""
    path = tmp_path / "scheduler.json"
    path.write_text(json.dumps({"address": dask_cluster.scheduler_address}))
    s = batch.encode_folder(tree, tmp_path / "out", encode_options={"quality": Q}, bundle=bundle_path,
                            scheduler=str(path))
    assert s["ok"] == 6 and s["scheduler"] == dask_cluster.scheduler_address


def test_without_distributed_says_what_to_install(tree, tmp_path, bundle_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(RuntimeError, match=r'pip install "keras-codec\[cluster\]"'):
        batch.encode_folder(tree, tmp_path / "out", bundle=bundle_path, scheduler="local:1")
    assert not (tmp_path / "out").exists()


def test_worker_killed_mid_batch(tmp_path, bundle_path):
    src = tmp_path / "in"
    _images(src, 16, seed=3)
    batch.encode_folder(src, tmp_path / "local", encode_options={"quality": Q}, jobs=1, bundle=bundle_path)
    killed = []
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as c:
        def kill_one(record, snap):
            """SIGKILL a worker process the scheduler has files on (running or queued), once."""
            if killed:
                return
            for nanny in c.workers.values():
                state = c.scheduler.workers.get(nanny.worker_address)
                if state is not None and state.processing:
                    killed.append(len(state.processing))
                    os.kill(nanny.process.process.pid, signal.SIGKILL)
                    return

        s = batch.encode_folder(src, tmp_path / "dask", encode_options={"quality": Q}, bundle=bundle_path,
                                scheduler=c.scheduler_address, on_file=kill_one)
    assert killed and s["ok"] == 16 and s["failed"] == 0
    got = _outputs(tmp_path / "dask")
    assert got == _outputs(tmp_path / "local") and len(got) == 16  # complete, no duplicates, no temporary files
    for name, data in got.items():
        bs.parse(data, source=name)


def test_edge_import_does_not_import_dask():
    code = ("import sys, edge_runtime.batch, edge_runtime.cli; from edge_runtime.cli import build_parser; "
            "build_parser(); bad = [m for m in ('dask', 'distributed') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr


def _count_codec_loads():
    """On a worker: count runtime.load_codec calls from now on (the worker keeps the count)."""
    from edge_runtime import runtime

    original = getattr(runtime.load_codec, "counted", runtime.load_codec)

    def counting(*args, **kwargs):
        counting.calls += 1
        return original(*args, **kwargs)

    counting.calls, counting.counted = 0, original
    runtime.load_codec = counting
    cluster._codecs.__dict__.clear()  # forget codecs earlier tests loaded on this worker thread


def _codec_loads():
    from edge_runtime import runtime

    return runtime.load_codec.calls


def test_each_worker_loads_the_codec_once_not_once_per_file(tmp_path, bundle_path):
    src = tmp_path / "in"
    _images(src, 8)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as c, distributed.Client(c) as client:
        client.run(_count_codec_loads)
        s = batch.encode_folder(src, tmp_path / "out", encode_options={"quality": Q}, bundle=bundle_path,
                                scheduler=c.scheduler_address)
        loads = client.run(_codec_loads)
    assert s["ok"] == 8 and s["failed"] == 0
    assert sum(loads.values()) == s["workers_used"] >= 1 and max(loads.values()) == 1  # one per worker, 8 files
