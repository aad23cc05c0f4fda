"""What a PACS operator expects of `edge-codec encode|decode DIR OUTDIR` and of the CLI:
SIGTERM stops the workers, links do not lead out of the trees, outputs follow the umask, stale temporary files
go, a read-only or busy OUTDIR is found before any work, an empty DIR is an error, messages name the input and
never quote a file's content, and a closed pipe ends quietly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from data.image import Image
from data.readers import read_image
from data.writers import write_dicom
from edge_runtime import batch, runtime
from edge_runtime.cli import main

SECRET = "root:x:0:0:root:/root:/bin/bash\n"


def _images(folder: Path, n: int, seed: int = 0) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        r, c = np.mgrid[0:40, 0:56]
        px = (600 + 25 * r + 18 * c + rng.normal(0, 30, r.shape)).clip(0, 4095).astype(np.uint16)[None, :, :, None]
        paths.append(write_dicom(folder / f"im{i:03d}.dcm", Image(pixels=px, bits_stored=12, signed=False)))
    return paths


def _children(pid: int) -> list:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone
    except OSError:
        return False


def _start_batch(src: Path, out: Path, bundle_path: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edge_runtime.cli", "encode", str(src), str(out), "--jobs", "2", "--quality", "12",
           "--bundle", str(bundle_path)]
    with open(log, "w") as f:  # files, not pipes: a surviving worker would hold a pipe open
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)


def _wait_for_output(out: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not (out.is_dir() and any(out.glob("*.kcd"))):
        assert proc.poll() is None, "the batch ended before it was caught at work"
        assert time.monotonic() - t0 < timeout, "no output appeared"
        time.sleep(0.02)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc (Linux)")
def test_sigterm_stops_the_workers_and_the_summary_says_interrupted(tmp_path, bundle_path):
    """Item 7: SIGTERM to `edge-codec encode DIR OUT --jobs 2` mid-run: exit 143, every worker gone, the
    summary written and saying interrupted by SIGTERM."""
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, 160)
    proc = _start_batch(src, out, bundle_path, tmp_path / "log.txt")
    kids = []
    try:
        _wait_for_output(out, proc)
        kids = _children(proc.pid)
        assert len(kids) >= 2  # the two workers (and multiprocessing's resource tracker)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 143
        deadline = time.monotonic() + 10
        while any(_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [k for k in kids if _alive(k)], "worker processes outlived the batch"
    finally:
        if proc.poll() is None:
            proc.kill()
        for k in kids:  # the processes this test started, should any survive
            if _alive(k):
                os.kill(k, signal.SIGKILL)
    s = json.loads((out / batch.SUMMARY_NAME).read_text())
    assert s["interrupted"] is True and s["interrupted_by"] == "SIGTERM" and s["ok"] < s["total"] == 160
    assert s["worker_start"] == "fork"  # the workers had their parent's SIGTERM handler: it was reset
    log = (tmp_path / "log.txt").read_text()
    assert "interrupted by SIGTERM" in log and "Traceback" not in log
    assert not list(out.rglob("*.tmp")) and not (out / batch.LOCK_NAME).exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc (Linux)")
def test_a_second_run_into_a_busy_outdir_stops_at_once(tmp_path, bundle_path, codec):
    """Item 10: two runs into one OUTDIR: the second stops before any work, saying why (before: both coded
    and the summary left said that everything had failed)."""
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, 160)
    proc = _start_batch(src, out, bundle_path, tmp_path / "log.txt")
    try:
        _wait_for_output(out, proc)
        summary_before = (out / batch.SUMMARY_NAME).exists()
        with pytest.raises(RuntimeError, match=r"another edge-codec run \(process \d+\) is writing"):
            batch.encode_folder(src, out, encode_options={"quality": 12}, jobs=1, bundle=codec)
        assert (out / batch.SUMMARY_NAME).exists() == summary_before
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    s = batch.encode_folder(src, out, encode_options={"quality": 12}, jobs=1, bundle=codec)  # free again
    assert s["failed"] == 0 and s["ok"] + s["skipped"] == 160


def test_links_out_of_the_input_tree_are_not_followed_nor_quoted(tmp_path, codec, capsys, bundle_path):
    """Item 9: a link to a file outside DIR is not coded (nor read: its content never reaches stderr or the
    summary) unless asked; with --follow-symlinks the image is coded, the text file fails without a quote."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text(SECRET * 3)
    image = _images(outside, 1)[0]
    src = tmp_path / "in"
    _images(src, 1)
    (src / "passwd.dcm").symlink_to(outside / "passwd")
    (src / "scan.dcm").symlink_to(image)
    out = tmp_path / "out"
    assert main(["encode", str(src), str(out), "--jobs", "1", "--bundle", str(bundle_path), "-q", "8"]) == 1
    io_ = capsys.readouterr()
    s = json.loads((out / batch.SUMMARY_NAME).read_text())
    assert s["ok"] == 1 and {f["input"] for f in s["failures"]} == {"passwd.dcm", "scan.dcm"}
    assert all("symbolic link that leads out" in f["reason"] for f in s["failures"])
    assert not (out / "scan.kcd").exists()

    out2 = tmp_path / "out2"
    assert main(["encode", str(src), str(out2), "--jobs", "1", "--bundle", str(bundle_path), "-q", "8",
                 "--follow-symlinks"]) == 1
    io2 = capsys.readouterr()
    s2 = json.loads((out2 / batch.SUMMARY_NAME).read_text())
    assert s2["ok"] == 2 and [f["input"] for f in s2["failures"]] == ["passwd.dcm"]
    for text in (io_.out, io_.err, io2.out, io2.err, json.dumps(s), json.dumps(s2)):
        assert "root:x" not in text and "/bin/bash" not in text


def test_nothing_is_written_outside_outdir(tmp_path, codec):
    """Item 9: OUTDIR/sub is a link elsewhere (left by someone, or a hostile tree): the files that would go
    there fail, naming it; the elsewhere folder stays empty."""
    src = tmp_path / "in"
    _images(src / "sub", 2)
    _images(src, 1)
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    out.mkdir()
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)
    s = batch.encode_folder(src, out, encode_options={"quality": 8}, jobs=1, bundle=codec)
    assert s["ok"] == 1 and sorted(f["input"] for f in s["failures"]) == ["sub/im000.dcm", "sub/im001.dcm"]
    assert all("leads out of" in f["reason"] for f in s["failures"])
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_follow_the_umask(mask, tmp_path, codec, synthetic_dcm):
    """Item 10: outputs get 0666 less the umask, like any file the user makes (before: always 0600)."""
    old = os.umask(mask)
    try:
        runtime.encode_file(synthetic_dcm, tmp_path / "a.kcd", bundle=codec, quality=8)
        runtime.decode_file(tmp_path / "a.kcd", tmp_path / "a.dcm", bundle=codec)
    finally:
        os.umask(old)
    for name in ("a.kcd", "a.dcm"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_stale_temporary_files_are_removed(tmp_path, codec):
    """Item 10: a killed run's hidden temporary files are cleaned at the next run; others' files stay."""
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src / "sub", 1)
    (out / "sub").mkdir(parents=True)
    stale = [out / ".im000.kcd.ab12cd_9.tmp", out / "sub" / ".im000.kcd.zz00zz00.tmp"]
    for p in stale:
        p.write_bytes(b"half a stream")
    keep = [out / ".mine.tmp", out / "notes.tmp"]
    for p in keep:
        p.write_text("the user's")
    s = batch.encode_folder(src, out, encode_options={"quality": 8}, jobs=1, bundle=codec)
    assert s["stale_tmp_removed"] == 2 and not any(p.exists() for p in stale) and all(p.exists() for p in keep)


def test_read_only_outdir_is_found_before_any_coding(tmp_path, codec, monkeypatch):
    """Item 10: an OUTDIR that takes no file stops the batch up front (before: every file was encoded, then
    failed to be written, one by one)."""
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, 3)
    out.mkdir()
    calls = []
    real_encode = runtime.encode_file
    monkeypatch.setattr(runtime, "encode_file", lambda *a, **k: calls.append(a) or real_encode(*a, **k))
    if os.geteuid() == 0:  # root writes anywhere: make the folder refuse files the way a read-only mount does
        real_mkstemp = tempfile.mkstemp

        def refusing(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve() == out.resolve():
                raise PermissionError(13, "Permission denied", str(dir))
            return real_mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", refusing)
    else:
        out.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="cannot write to the output folder.*nothing was coded"):
            batch.encode_folder(src, out, encode_options={"quality": 8}, jobs=1, bundle=codec)
    finally:
        out.chmod(0o755)
    assert calls == [] and list(out.iterdir()) == []


def test_empty_input_folder_is_an_error(tmp_path, codec, capsys, bundle_path):
    """Item 10: nothing to do exits 1 and makes no output folder (before: exit 0 and an empty OUTDIR)."""
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    (empty / "notes.txt").write_text("no image")
    for command in ("encode", "decode"):
        out = tmp_path / f"out_{command}"
        assert main([command, str(empty), str(out), "--bundle", str(bundle_path)]) == 1
        err = capsys.readouterr().err
        assert "nothing to do" in err and str(empty) in err
        assert not out.exists()


def test_messages_say_force_and_name_the_input(tmp_path, codec, capsys, bundle_path, synthetic_dcm):
    """Item 10: an output that appeared meanwhile says --force (not overwrite=True); a failed output write
    names the input too."""
    from data.writers import atomic_write

    (tmp_path / "x.bin").write_bytes(b"1")
    with pytest.raises(FileExistsError, match="use --force") as info:
        atomic_write(tmp_path / "x.bin", b"2", overwrite=False)
    assert "pass overwrite=True" not in str(info.value)
    kcd = tmp_path / "a.kcd"
    runtime.encode_file(synthetic_dcm, kcd, bundle=codec, quality=8)
    assert main(["decode", str(kcd), str(tmp_path / "no" / "such" / "a.dcm"), "--bundle", str(bundle_path)]) == 1
    err = capsys.readouterr().err
    assert str(kcd) in err and "a.dcm" in err and len(err.strip().splitlines()) == 1


def test_dicom_truncated_inside_its_header(tmp_path, ct_dcm):
    """Item 10: said so (before: 'has no Pixel Data', as if it were a non-image object)."""
    data = ct_dcm.read_bytes()
    for cut in (700, 1500):
        (tmp_path / "t.dcm").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated inside its DICOM header") as info:
            read_image(tmp_path / "t.dcm")
        assert "copy it again" in str(info.value)


def test_a_non_image_is_described_not_quoted(tmp_path):
    (tmp_path / "passwd.dcm").write_text(SECRET)
    with pytest.raises(ValueError, match="text file") as info:
        read_image(tmp_path / "passwd.dcm")
    assert "root" not in str(info.value).replace(str(tmp_path), "")


def test_output_closed_early_ends_quietly(tmp_path):
    """Item 10: `edge-codec info x.kcd | head -1`: no 'Broken pipe' error, exit 141 (what SIGPIPE gives)."""
    golden = Path(__file__).resolve().parents[1] / "golden" / "ct_small_q14.kcd"
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the first line
    try:
        r = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "info", str(golden)], stdout=write,
                           stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert r.returncode == 141 and r.stderr == ""
