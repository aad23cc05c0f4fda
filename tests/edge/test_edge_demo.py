"""`keras-codec demo` runs without the training side: one tiny image through the whole report.

`make test` runs this in .venv-edge (no TensorFlow, Python 3.11-3.13) as well as in the workstation
venv. The demo runs in a fresh interpreter whose import system refuses the training stack, so the
check holds even where TensorFlow is installed, and this session's own no-TensorFlow check
(conftest.py) stays meaningful.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

TRAINING_SIDE = ("tensorflow", "tensorflow_compression", "keras", "tf_keras", "export")

# A fresh interpreter: refuse (and record) any import of the training side, run the CLI, report what loaded.
GUARDED_CLI = textwrap.dedent("""
    import json, sys
    FORBIDDEN = {forbidden!r}
    tried = []

    class RefuseTrainingSide:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in FORBIDDEN:
                tried.append(name)
                raise ImportError(f"the demo imported {{name}}")
            return None

    sys.meta_path.insert(0, RefuseTrainingSide())
    from keras_codec.cli import main
    rc = main({argv!r})
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
    print("GUARD " + json.dumps({{"rc": rc, "tried": tried, "loaded": loaded}}))
""")


def _run_guarded(argv: list, timeout: float) -> tuple[dict, str]:
    code = GUARDED_CLI.format(forbidden=TRAINING_SIDE, argv=argv)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("GUARD ")]
    assert r.returncode == 0 and lines, r.stdout + r.stderr
    return json.loads(lines[-1][len("GUARD "):]), r.stdout + r.stderr


@pytest.fixture()
def tiny_folder(tmp_path) -> Path:
    """A folder with one 48x64 12-bit DICOM: smooth ramps, a bright disc and a little noise."""
    from data.image import Image
    from data.writers import write_dicom

    rng = np.random.default_rng(3)
    r, c = np.mgrid[0:48, 0:64]
    x = 500 + 20 * r + 12 * c + 1200 * ((r - 24) ** 2 + (c - 30) ** 2 < 150) + rng.normal(0, 5, (48, 64))
    pixels = np.clip(np.round(x), 0, 4095).astype(np.uint16)[None, :, :, None]
    folder = tmp_path / "images"
    folder.mkdir()
    write_dicom(folder / "tiny.dcm", Image(pixels=pixels, bits_stored=12, signed=False, modality="CT"))
    return folder


@pytest.mark.skipif(importlib.util.find_spec("imagecodecs") is None,
                    reason="the demo's classical codecs need imagecodecs (requirements-demo.txt)")
def test_demo_runs_without_the_training_side(tiny_folder, tmp_path):
    out = tmp_path / "out"
    guard, text = _run_guarded(["demo", "--dir", str(tiny_folder), "--out", str(out)], timeout=300)
    assert guard["tried"] == [] and guard["loaded"] == [], text
    assert guard["rc"] == 0, text
    assert "tiny.dcm (CT, 48x64, 12 bits stored in 16): bpp of each codec at our PSNR" in text
    assert "BD-rate of ours over 40-55 dB" in text
    for name in ("tiny.kcd", "tiny.dcm", "tiny_rd.png", "tiny_error.png", "demo.csv"):
        assert (out / name).stat().st_size > 0, name


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="TensorFlow is installed here; `make test` checks these messages in .venv-edge")
@pytest.mark.parametrize("argv", [["train", "--out", "{tmp}/run"], ["export"], ["eval"],
                                  ["bench", "--backend", "keras", "--dir", "{tmp}/none"]])
def test_training_commands_say_what_they_need(argv, tmp_path):
    """Without TensorFlow, a command that needs it stops with one line naming the workstation install."""
    argv = [a.format(tmp=tmp_path) for a in argv]
    code = f"import sys; from keras_codec.cli import main; sys.exit(main({argv!r}))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"keras-codec: error: keras-codec {argv[0]} needs the workstation install "
                               "(Python 3.11 + TensorFlow 2.14: `make setup`"), lines[0]
    assert "has no tensorflow" in lines[0], lines[0]
