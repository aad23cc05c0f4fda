"""Set-up: `.ci/find-python` finds a working interpreter or says in one line what is missing, `make`
stops before any download when the Python it needs is absent, and `keras-codec` says which
commands need the workstation install."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FINDER = ROOT / ".ci" / "find-python"
HERE_VERSION = "%d.%d" % sys.version_info[:2]
REAL_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _sandbox(tmp_path) -> tuple[Path, dict]:
    """A bin folder and an environment where PATH, pyenv and uv hold only what a test puts there."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path / "home"), "PYENV_ROOT": str(tmp_path / "pyenv")}
    return bin_dir, env


def _broken_shim(path: Path) -> None:
    """What a pyenv shim does for a version pyenv does not have."""
    path.write_text(f'#!/bin/sh\necho "pyenv: {path.name}: command not found" >&2\nexit 127\n')
    path.chmod(0o755)


def _find(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", str(FINDER), *args], env=env, capture_output=True, text=True, timeout=60)


def test_finder_stops_with_one_line_when_no_python_works(tmp_path):
    bin_dir, env = _sandbox(tmp_path)
    _broken_shim(bin_dir / "python3.11")
    r = _find(env, "--need", "make test", "3.11")
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("make test needs Python 3.11, and none works here (found but not working or "
                               f"without venv: {bin_dir / 'python3.11'})"), lines[0]
    assert "`uv python install 3.11`" in lines[0] and "PYTHON=/path/to/python3.11" in lines[0]

    r = _find(env, "--need", "make demo", "--var", "EDGE_PYTHON", "3.13", "3.12", "3.11")
    assert r.returncode == 1
    assert r.stderr.startswith("make demo needs Python 3.13, 3.12 or 3.11, and none works here"), r.stderr
    assert "EDGE_PYTHON=/path/to/python3.13" in r.stderr


def test_finder_skips_broken_shims_and_finds_pyenv_and_uv(tmp_path):
    bin_dir, env = _sandbox(tmp_path)
    _broken_shim(bin_dir / f"python{HERE_VERSION}")
    pyenv_bin = tmp_path / "pyenv" / "versions" / f"{HERE_VERSION}.99" / "bin"
    pyenv_bin.mkdir(parents=True)
    (pyenv_bin / f"python{HERE_VERSION}").symlink_to(REAL_PYTHON)
    # preference order: versions that are missing are passed over, the first that works is printed
    r = _find(env, "3.99", HERE_VERSION, "3.98")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and Path(r.stdout.strip()).samefile(REAL_PYTHON)

    shutil.rmtree(tmp_path / "pyenv")
    uv_bin = tmp_path / "home" / ".local" / "share" / "uv" / "python" / f"cpython-{HERE_VERSION}.5-linux" / "bin"
    uv_bin.mkdir(parents=True)
    (uv_bin / f"python{HERE_VERSION}").symlink_to(REAL_PYTHON)
    r = _find(env, HERE_VERSION)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).samefile(REAL_PYTHON)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("target, needs", [
    ("setup", "make setup and make test (the training stack: TensorFlow 2.14, which tensorflow-compression's "
              "last release is built for) needs Python 3.11"),
    ("test", "make setup and make test"),
    ("demo", "make demo (no TensorFlow) needs Python 3.13, 3.12 or 3.11"),
])
def test_make_stops_before_any_download_without_the_python_it_needs(tmp_path, target, needs):
    repo = tmp_path / "repo"
    for rel in ("Makefile", ".ci/find-python", "requirements.txt", "requirements-demo.txt",
                "edge_runtime/requirements.txt", "setup.cfg", "pyproject.toml"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, repo / rel)
    bin_dir, env = _sandbox(tmp_path)
    (bin_dir / "make").symlink_to(shutil.which("make"))
    _broken_shim(bin_dir / "python3.11")
    r = subprocess.run(["make", "-C", str(repo), target], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert needs in r.stderr, r.stderr
    assert "pip" not in r.stdout, r.stdout
    assert not (repo / ".venv").exists() and not (repo / ".venv-edge").exists()


def test_cli_says_which_commands_need_the_workstation_install(monkeypatch, capsys, tmp_path):
    """Where TensorFlow is missing, train/eval/export stop up front, and a later missing import of the
    training stack is one line too, not a traceback."""
    from keras_codec import cli

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflow" else find_spec(name, *a))
    assert cli.main(["train", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("keras-codec: error: keras-codec train needs the workstation install (Python 3.11 + "
                          "TensorFlow 2.14: `make setup`, then .venv/bin/keras-codec); this Python ("), err
    assert err.endswith("has no tensorflow") and "\n" not in err
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()

    def needs_tfc(args):
        raise ModuleNotFoundError("No module named 'tensorflow_compression'", name="tensorflow_compression")

    monkeypatch.setattr(cli, "_cmd_bench", needs_tfc)
    assert cli.main(["bench", "--backend", "keras"]) == 2
    err = capsys.readouterr().err.strip()
    assert "keras-codec bench needs the workstation install" in err and err.endswith("has no tensorflow_compression")

    def needs_other(args):
        raise ModuleNotFoundError("No module named 'nothere'", name="nothere")

    monkeypatch.setattr(cli, "_cmd_bench", needs_other)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["bench"])
