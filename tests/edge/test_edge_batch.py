"""`edge-codec encode|decode DIR OUTDIR`: layout, names, resuming, failures, workers, summary."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from data.readers import read_image
from edge_runtime import batch, runtime
from edge_runtime.cli import _Progress, main

Q = "6"
EXPECTED_KCD = {"ct.kcd", "sub/gray.dcm.kcd", "sub/gray.png.kcd"}  # gray.dcm and gray.png keep their full names


@pytest.fixture
def tree(tmp_path, synthetic_dcm) -> Path:
    """ct.dcm, sub/gray.dcm + sub/gray.png (same stem), sub/deep/bad.dcm (text), notes.txt (not an image)."""
    from data.image import Image
    from data.writers import write_dicom, write_png

    root = tmp_path / "in"
    (root / "sub" / "deep").mkdir(parents=True)
    shutil.copy(synthetic_dcm, root / "ct.dcm")
    px = read_image(synthetic_dcm).pixels
    write_dicom(root / "sub" / "gray.dcm", Image(pixels=px // 3, bits_stored=12, signed=False, modality="OT"))
    write_png(root / "sub" / "gray.png", Image(pixels=(px // 16).astype(np.uint8), bits_stored=8, signed=False))
    (root / "sub" / "deep" / "bad.dcm").write_text("not an image\n" * 20)
    (root / "notes.txt").write_text("ignored")
    return root


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _summary(folder: Path) -> dict:
    return json.loads((folder / batch.SUMMARY_NAME).read_text())


def _counts(s: dict) -> tuple:
    return s["ok"], s["skipped"], s["failed"]


def test_encode_decode_tree_resume_and_force(tree, tmp_path, bundle_path, codec, capsys):
    out, dec = tmp_path / "out", tmp_path / "dec"
    args = ["--bundle", str(bundle_path), "--jobs", "1"]
    assert main(["encode", str(tree), str(out), "--quality", Q] + args) == 1
    io_ = capsys.readouterr()
    failed_lines = [ln for ln in io_.err.splitlines() if "failed:" in ln]
    assert len(failed_lines) == 1 and "sub/deep/bad.dcm" in failed_lines[0] and "Traceback" not in io_.err
    assert "3 ok, 0 skipped, 1 failed" in io_.out and "bad.dcm" in io_.out

    kcd = {k: v for k, v in _files(out).items() if k.endswith(".kcd")}
    assert set(kcd) == EXPECTED_KCD
    for rel, name in (("ct.kcd", "ct.dcm"), ("sub/gray.dcm.kcd", "sub/gray.dcm"), ("sub/gray.png.kcd", "sub/gray.png")):
        single = tmp_path / "single.kcd"
        runtime.encode_file(tree / name, single, quality=int(Q), bundle=codec, force=True)
        assert kcd[rel] == single.read_bytes(), rel
    s = _summary(out)
    assert _counts(s) == (3, 0, 1) and s["total"] == 4 and s["encode_options"] == {"quality": int(Q)}
    assert [f["input"] for f in s["failures"]] == ["sub/deep/bad.dcm"] and "DICOM" in s["failures"][0]["reason"]
    assert s["bytes_in"] == sum((tree / n).stat().st_size for n in ("ct.dcm", "sub/gray.dcm", "sub/gray.png"))
    assert s["bytes_out"] == sum(len(v) for v in kcd.values())

    # Decode: the format follows the stream (DICOM header -> .dcm), x.dcm.kcd -> x.dcm.
    assert main(["decode", str(out), str(dec)] + args) == 0
    assert set(_files(dec)) == {"ct.dcm", "sub/gray.dcm", "sub/gray.png", batch.SUMMARY_NAME}
    for rel in ("ct", "sub/gray.dcm", "sub/gray.png"):
        name = rel if "." in rel else rel + ".dcm"
        single = tmp_path / ("single" + Path(name).suffix)
        runtime.decode_file(out / (rel + ".kcd"), single, bundle=codec, force=True)
        assert np.array_equal(read_image(dec / name).pixels, read_image(single).pixels), rel
    assert (dec / "sub" / "gray.png").read_bytes() == single.read_bytes()
    capsys.readouterr()

    # A second run skips what is done (the bad file fails again); a broken .kcd is redone.
    assert main(["encode", str(tree), str(out), "--quality", Q] + args) == 1
    assert _counts(_summary(out)) == (0, 3, 1)
    assert main(["decode", str(out), str(dec)] + args) == 0
    assert _counts(_summary(dec)) == (0, 3, 0)
    (out / "ct.kcd").write_bytes(kcd["ct.kcd"][:-10])
    assert main(["encode", str(tree), str(out), "--quality", Q] + args) == 1
    s = _summary(out)
    assert _counts(s) == (1, 2, 1) and [f["input"] for f in s["files"] if f["status"] == "ok"] == ["ct.dcm"]
    assert (out / "ct.kcd").read_bytes() == kcd["ct.kcd"]

    # --force redoes everything, to the same bytes.
    assert main(["encode", str(tree), str(out), "--quality", Q, "--force"] + args) == 1
    assert _counts(_summary(out)) == (3, 0, 1)
    assert {k: v for k, v in _files(out).items() if k.endswith(".kcd")} == kcd
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def _same_outputs(a: Path, b: Path) -> set:
    """The files of two output folders are the same bytes (but their summaries); their names."""
    fa, fb = _files(a), _files(b)
    fa.pop(batch.SUMMARY_NAME), fb.pop(batch.SUMMARY_NAME)
    assert fa == fb
    return set(fa)


def test_two_jobs_give_the_same_bytes_as_one(tree, tmp_path, bundle_path):
    """Spawned workers (another thread runs here), then forked ones (`edge-codec` is one thread): the same
    bytes as one process."""
    (tree / "sub" / "deep" / "bad.dcm").unlink()
    one, two = tmp_path / "one", tmp_path / "two"
    s1 = batch.encode_folder(tree, one, encode_options={"quality": int(Q)}, jobs=1, bundle=bundle_path)
    busy = threading.Event()
    other = threading.Thread(target=busy.wait)
    other.start()
    try:
        s2 = batch.encode_folder(tree, two, encode_options={"quality": int(Q)}, jobs=2, bundle=bundle_path)
        d2 = tmp_path / "d2"
        batch.decode_folder(one, d2, fmt="tif", jobs=2, bundle=bundle_path)
    finally:
        busy.set()
        other.join()
    assert s1["worker_start"] is None and (s2["worker_processes"], s2["worker_start"]) == (2, "spawn")
    assert _counts(s1) == _counts(s2) == (3, 0, 0) and _same_outputs(one, two) == EXPECTED_KCD
    d1 = tmp_path / "d1"
    batch.decode_folder(one, d1, fmt="tif", jobs=1, bundle=bundle_path)
    # --format for all: gray.dcm.kcd and gray.png.kcd would both be gray.tif, so they keep full names.
    assert _same_outputs(d1, d2) == {"ct.tif", "sub/gray.dcm.tif", "sub/gray.png.tif"}
    if not sys.platform.startswith("linux"):
        return
    cli = [sys.executable, "-m", "edge_runtime.cli"]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    for cmd, src, out, ref in (("encode", tree, tmp_path / "three", one), ("decode", one, tmp_path / "d3", d1)):
        args = [cmd, str(src), str(out), "--jobs", "2", "--bundle", str(bundle_path)]
        args += ["--quality", Q] if cmd == "encode" else ["--format", "tif"]
        subprocess.run(cli + args, env=env, check=True, capture_output=True)
        assert (_summary(out)["worker_processes"], _summary(out)["worker_start"]) == (2, "fork")
        assert _same_outputs(ref, out)


_PROBE = """
import signal, sys, types
from edge_runtime import batch

def state(*args, **kwargs):
    return {"term": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, "int": signal.getsignal(signal.SIGINT)}

signal.signal(signal.SIGTERM, lambda *a: None)  # a parent's own handler, as a batch installs one
got, methods = [], set()
task = types.SimpleNamespace(src="a", dst="b", overwrite=False)
batch._run_pool(state, (), [task], 1, (sys.argv[1], "xnnpack"), lambda t, r: got.append(r), start_methods=methods)
print(sorted(methods), got)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
def test_forked_workers_drop_their_parents_sigterm_handler(bundle_path):
    """A forked batch worker ends on SIGTERM as a spawned one does, whatever handler its parent had, and ignores
    SIGINT (Ctrl-C is the parent's)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _PROBE, str(bundle_path)], env=env, check=True, capture_output=True,
                         text=True).stdout.strip()
    assert out == "['fork'] [{'term': True, 'int': <Handlers.SIG_IGN: 1>}]"


def test_workers_fork_from_one_thread_and_spawn_beside_others():
    """batch.worker_context: fork only while the process has one thread (threads that Python did not start count)."""
    code = ("import threading; from edge_runtime.batch import worker_context as w; a = w().get_start_method(); "
            "e = threading.Event(); t = threading.Thread(target=e.wait); t.start(); b = w().get_start_method(); "
            "e.set(); t.join(); print(a, b)")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    methods = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    want = ["fork", "spawn"] if sys.platform.startswith("linux") else ["spawn"] * 2
    assert methods.stdout.split() == want
    if sys.platform.startswith("linux"):  # a thread of a library (here BLAS's own) counts too
        env["OPENBLAS_NUM_THREADS"] = "2"
        code = "import numpy; from edge_runtime.batch import worker_context as w; print(w().get_start_method())"
        methods = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
        assert methods.stdout.split() == ["spawn"]


def test_output_folder_inside_the_input_folder(tree, tmp_path, bundle_path, capsys):
    args = ["--bundle", str(bundle_path), "--jobs", "1", "--quality", Q]
    assert main(["encode", str(tree), str(tree)] + args) == 1
    assert "is the input folder" in capsys.readouterr().err
    assert main(["encode", str(tree / "sub"), str(tree)] + args) == 1
    assert "contains the input folder" in capsys.readouterr().err
    assert not list(tree.rglob("*.kcd")) and not (tree / batch.SUMMARY_NAME).exists()

    inner = tree / "coded"
    (inner / "old").mkdir(parents=True)
    shutil.copy(tree / "sub" / "gray.png", inner / "old" / "stray.png")  # an image inside OUTDIR is not an input
    (tree / "sub" / "deep" / "bad.dcm").unlink()
    assert main(["encode", str(tree), str(inner)] + args) == 0
    s = _summary(inner)
    assert _counts(s) == (3, 0, 0) and not any("stray" in f["input"] for f in s["files"])
    assert main(["decode", str(inner), str(inner / "dec"), "--bundle", str(bundle_path), "--jobs", "1"]) == 0
    assert _counts(_summary(inner / "dec")) == (3, 0, 0)
    assert main(["decode", str(inner), str(inner / "dec"), "--bundle", str(bundle_path), "--jobs", "1"]) == 0
    assert _counts(_summary(inner / "dec")) == (0, 3, 0)


def test_corrupt_stream_in_decode_and_interrupt(tree, tmp_path, bundle_path, codec):
    (tree / "sub" / "deep" / "bad.dcm").unlink()
    out = tmp_path / "out"
    batch.encode_folder(tree, out, encode_options={"quality": int(Q)}, jobs=1, bundle=codec)
    (out / "sub" / "zz.kcd").write_bytes(b"KCD1" + bytes(60))
    s = batch.decode_folder(out, tmp_path / "dec", jobs=1, bundle=codec)
    assert _counts(s) == (3, 0, 1) and s["failures"][0]["input"] == "sub/zz.kcd"
    assert "CRC" in s["failures"][0]["reason"] or "stream" in s["failures"][0]["reason"]

    seen = []

    def stop_after_first(record, snap):
        seen.append((record["status"], snap["done"], snap["total"]))
        if record["status"] == "ok":
            raise KeyboardInterrupt

    s = batch.decode_folder(out, tmp_path / "dec2", jobs=1, bundle=codec, on_file=stop_after_first)
    assert s["interrupted"] and _counts(s) == (1, 0, 1) and s["total"] == 4
    assert seen[-1] == ("ok", 2, 4)  # the planned failure first, then the first decoded file of four
    assert _summary(tmp_path / "dec2")["interrupted"] is True


def test_bad_options_are_refused(tree, tmp_path, codec):
    with pytest.raises(ValueError, match="force"):
        batch.encode_folder(tree, tmp_path / "o", encode_options={"force": True}, bundle=codec)
    with pytest.raises(ValueError, match="format"):
        batch.decode_folder(tree, tmp_path / "o", fmt="jpg", bundle=codec)
    with pytest.raises(ValueError, match="jobs=1"):
        batch.encode_folder(tree, tmp_path / "o", jobs=2, bundle=codec)


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_line():
    snap = {"done": 2, "total": 4, "ok": 1, "skipped": 0, "failed": 1, "elapsed": 2.0, "files_per_second": 1.0,
            "mb_per_second": 0.5, "eta": 125.0}
    tty = _Tty()
    p = _Progress("encode", "in", stream=tty)
    p({"status": "failed", "input": "a/b.dcm", "reason": "broken"}, snap)
    p.close()
    text = tty.getvalue()
    assert f"failed: {os.path.join('in', 'a/b.dcm')}: broken\n" in text
    assert "\r2/4 files, 1.0 files/s, 0.5 MB/s in, ETA 2:05 (1 failed)" in text and text.endswith("\n")
    plain = io.StringIO()
    p = _Progress("encode", "in", stream=plain)
    p({"status": "ok", "input": "a.dcm"}, {**snap, "failed": 0})
    assert plain.getvalue() == ""  # not a terminal: a line every few seconds, not per file


def _die_on_crash(kind, options, src, dst, overwrite):
    """Runs in a spawned worker (where batch._work is the real one): a file named crash* kills it."""
    if Path(src).name.startswith("crash"):
        os._exit(7)
    return batch._work(kind, options, src, dst, overwrite)


def _die_after_a_sibling_wrote(kind, options, src, dst, overwrite):
    """crash*: dies once ct.kcd is written, while the worker that wrote it still holds its result."""
    marker = Path(dst).with_name("written.marker")
    if Path(src).name.startswith("crash"):
        give_up = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < give_up:
            time.sleep(0.01)
        os._exit(7)
    result = batch._work(kind, options, src, dst, overwrite)
    if Path(src).name == "ct.dcm" and not marker.exists():  # only in the first pool: the retry returns at once
        marker.touch()
        time.sleep(3)
    return result


def test_an_output_written_before_a_sibling_died_is_not_a_failure(tree, tmp_path, bundle_path, codec, monkeypatch):
    # the broken pool loses ct.dcm's result although its worker wrote ct.kcd: run alone again, it is
    # coded again over its own output, not refused as an output that was there before the batch
    (tree / "sub" / "deep" / "bad.dcm").unlink()
    shutil.copy(tree / "ct.dcm", tree / "crash.dcm")
    monkeypatch.setattr(batch, "_work", _die_after_a_sibling_wrote)
    s = batch.encode_folder(tree, tmp_path / "out", encode_options={"quality": int(Q)}, jobs=2, bundle=bundle_path)
    assert _counts(s) == (3, 0, 1) and s["failures"][0]["input"] == "crash.dcm"
    runtime.encode_file(tree / "ct.dcm", tmp_path / "alone.kcd", quality=int(Q), bundle=codec)
    assert (tmp_path / "out" / "ct.kcd").read_bytes() == (tmp_path / "alone.kcd").read_bytes()


def test_a_dying_worker_costs_only_its_file(tree, tmp_path, bundle_path, monkeypatch):
    (tree / "sub" / "deep" / "bad.dcm").unlink()
    shutil.copy(tree / "ct.dcm", tree / "crash.dcm")
    monkeypatch.setattr(batch, "_work", _die_on_crash)  # pickled by name: workers import this module
    s = batch.encode_folder(tree, tmp_path / "out", encode_options={"quality": int(Q)}, jobs=2, bundle=bundle_path)
    assert _counts(s) == (3, 0, 1) and s["failures"][0]["input"] == "crash.dcm"
    assert "worker process died" in s["failures"][0]["reason"]
