"""`edge-codec` on good and bad input: exit codes, one-line errors, no partial or overwritten files."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from edge_runtime.cli import main


@pytest.fixture(scope="module")
def good_kcd(tmp_path_factory, ct_dcm, bundle_path) -> Path:
    out = tmp_path_factory.mktemp("kcd") / "ct.kcd"
    assert main(["encode", str(ct_dcm), str(out), "--quality", "6", "--bundle", str(bundle_path)]) == 0
    return out


def _recrc(data: bytes) -> bytes:
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def _bad_streams(data: bytes) -> dict:
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    model = bytearray(data)
    model[8:40] = bytes(32)
    geometry = bytearray(data)
    geometry[40:48] = struct.pack("<II", 0x7FFFFFFF, 0x7FFFFFFF)
    return {
        "truncated": data[: len(data) * 2 // 3],
        "bitflip": bytes(flipped),
        "magic": b"XCD1" + data[4:],
        "model_id": _recrc(bytes(model)),
        "geometry": _recrc(bytes(geometry)),
        "empty": b"",
    }


def _one_error_line(err: str, name: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and name in lines[0], err


CASES = ["truncated", "bitflip", "magic", "model_id", "geometry", "empty"]


@pytest.mark.parametrize("command,case", [(c, k) for c in ("decode", "verify", "info") for k in CASES
                                          if (c, k) != ("info", "model_id")])
def test_bad_streams_fail_cleanly(case, command, good_kcd, bundle_path, tmp_path, capsys):
    bad = tmp_path / f"{case}.kcd"
    bad.write_bytes(_bad_streams(good_kcd.read_bytes())[case])
    before = sorted(os.listdir(tmp_path))
    argv = [command, str(bad)] + ([str(tmp_path / "out.dcm")] if command == "decode" else [])
    code = main(argv + ["--bundle", str(bundle_path)])
    assert code != 0
    _one_error_line(capsys.readouterr().err, bad.name)
    assert sorted(os.listdir(tmp_path)) == before  # no output, no leftover temporary file


def test_info_reads_a_stream_of_another_model(good_kcd, bundle_path, tmp_path, capsys):
    other = tmp_path / "other.kcd"
    other.write_bytes(_bad_streams(good_kcd.read_bytes())["model_id"])
    assert main(["info", str(other), "--bundle", str(bundle_path)]) == 0
    assert "known: no" in capsys.readouterr().out


def test_error_messages_say_what_is_wrong(good_kcd, bundle_path, tmp_path, capsys):
    streams = _bad_streams(good_kcd.read_bytes())
    expect = {"model_id": "made by model", "geometry": "absurd geometry", "magic": "not a keras_codec stream",
              "bitflip": "CRC mismatch"}
    for case, words in expect.items():
        bad = tmp_path / f"{case}.kcd"
        bad.write_bytes(streams[case])
        assert main(["verify", str(bad), "--bundle", str(bundle_path)]) == 1
        assert words in capsys.readouterr().err


def test_text_file_as_image(bundle_path, tmp_path, capsys):
    txt = tmp_path / "notes.dcm"
    txt.write_text("this is not an image\n" * 20)
    out = tmp_path / "notes.kcd"
    assert main(["encode", str(txt), str(out), "--bundle", str(bundle_path)]) != 0
    _one_error_line(capsys.readouterr().err, txt.name)
    assert sorted(os.listdir(tmp_path)) == ["notes.dcm"]


def test_existing_output_needs_force(ct_dcm, good_kcd, bundle_path, tmp_path, capsys):
    out = tmp_path / "x.kcd"
    out.write_bytes(b"keep me")
    assert main(["encode", str(ct_dcm), str(out), "--bundle", str(bundle_path)]) == 1
    _one_error_line(capsys.readouterr().err, out.name)
    assert out.read_bytes() == b"keep me"
    dcm = tmp_path / "x.dcm"
    dcm.write_bytes(b"keep me too")
    assert main(["decode", str(good_kcd), str(dcm), "--bundle", str(bundle_path)]) == 1
    assert "--force" in capsys.readouterr().err and dcm.read_bytes() == b"keep me too"

    assert main(["encode", str(ct_dcm), str(out), "--bundle", str(bundle_path), "--force"]) == 0
    assert main(["decode", str(out), str(dcm), "--bundle", str(bundle_path), "--force"]) == 0
    assert out.read_bytes()[:4] == b"KCD1" and dcm.read_bytes()[128:132] == b"DICM"
    assert main(["verify", str(out), "--bundle", str(bundle_path)]) == 0
    assert main(["info", str(out), "--bundle", str(bundle_path)]) == 0
    text = capsys.readouterr().out
    assert "128 x 128" in text and "known: yes" in text


def test_never_overwrites_the_input(good_kcd, bundle_path, tmp_path, capsys):
    data = good_kcd.read_bytes()
    for command in ("encode", "decode"):
        src = tmp_path / ("in.kcd" if command == "encode" else "in.dcm")
        src.write_bytes(data)
        assert main([command, str(src), str(src), "--bundle", str(bundle_path), "--force"]) == 1
        assert src.read_bytes() == data
        capsys.readouterr()


def test_missing_tflite_and_reference_kernels(ct_dcm, good_kcd, bundle_path, tmp_path, capsys):
    import shutil

    nb = tmp_path / "bundle"
    nb.mkdir()
    for name in ("manifest.json", "context.npz", "tables.npz"):
        shutil.copy(bundle_path / name, nb / name)
    assert main(["encode", str(ct_dcm), str(tmp_path / "a.kcd"), "--bundle", str(nb)]) == 1
    err = capsys.readouterr().err
    assert "export" in err and "decoder.tflite" in err and len(err.strip().splitlines()) == 1
    # A stream of another model is refused for that reason first, before any graph is needed.
    assert main(["decode", str(good_kcd), str(tmp_path / "a.png"), "--bundle", str(nb)]) == 1
    assert "made by model" in capsys.readouterr().err
    assert main(["encode", str(ct_dcm), str(tmp_path / "b.kcd"), "--bundle", str(bundle_path),
                 "--kernels", "reference"]) == 0


def test_console_process_prints_no_traceback(bundle_path, tmp_path):
    """The real process, not just main(): a bad file gives exit 1 and one stderr line."""
    bad = tmp_path / "bad.kcd"
    bad.write_bytes(b"KCD1" + bytes(100))
    r = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "decode", str(bad), str(tmp_path / "o.png"),
                        "--bundle", str(bundle_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    _one_error_line(r.stderr, "bad.kcd")
    assert not (tmp_path / "o.png").exists()


def test_the_exit_waits_for_threads_runs_atexit_and_flushes(tmp_path):
    """The console script's exit (cli.exit_now) skips only the interpreter's teardown: a running thread is waited
    for, atexit functions run, buffered output reaches a pipe, and the status is the one given."""
    marker = tmp_path / "thread_done"
    code = (
        "import atexit, sys, threading, time\n"
        "from edge_runtime import cli\n"
        f"t = threading.Thread(target=lambda: (time.sleep(0.3), open({str(marker)!r}, 'w').write('done')))\n"
        "t.start()\n"
        "atexit.register(lambda: sys.stdout.write('atexit ran\\n'))\n"
        "sys.stdout.write('x' * 100000)\n"
        "cli.exit_now(3)\n"
        "print('never')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stderr
    assert r.stdout == "x" * 100000 + "atexit ran\n" and marker.read_text() == "done"


def test_the_console_script_is_run(good_kcd, bundle_path, tmp_path):
    """`python -m edge_runtime.cli` goes through cli.run: its status, its message and its output file."""
    out = tmp_path / "ct.tif"
    cmd = [sys.executable, "-m", "edge_runtime.cli", "decode"]
    r = subprocess.run(cmd + [str(good_kcd), str(out), "--bundle", str(bundle_path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and out.stat().st_size > 0, r.stderr
    r = subprocess.run(cmd + [str(tmp_path / "missing.kcd"), str(tmp_path / "x.tif"), "--bundle", str(bundle_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "missing.kcd" in r.stderr and not (tmp_path / "x.tif").exists()
