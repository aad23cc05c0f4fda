"""The edge runtime runs without TensorFlow: proven in .venv-edge, where TensorFlow is not installed."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

IN_EDGE_VENV = os.environ.get("KERAS_CODEC_EDGE_VENV") == "1"


@pytest.mark.skipif(not IN_EDGE_VENV, reason="the workstation venv has TensorFlow; `make test` checks .venv-edge")
def test_tensorflow_is_not_installed():
    with pytest.raises(ImportError):
        import tensorflow  # noqa: F401


def test_edge_modules_import_no_tensorflow(bundle_path, ct_dcm, tmp_path):
    """A full encode + decode in a fresh interpreter leaves tensorflow and keras_codec unimported."""
    code = textwrap.dedent(f"""
        import sys
        from edge_runtime import cli, runtime, tflite_runner
        c = runtime.load_codec({str(bundle_path)!r})
        runtime.encode_file({str(ct_dcm)!r}, {str(tmp_path / 'a.kcd')!r}, bundle=c)
        runtime.decode_file({str(tmp_path / 'a.kcd')!r}, {str(tmp_path / 'a.dcm')!r}, bundle=c)
        bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'keras_codec', 'export')]
        print(sorted(bad))
        sys.exit(1 if bad else 0)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_interpreter_is_not_tensorflow():
    from edge_runtime.tflite_runner import interpreter_module

    assert interpreter_module().__name__ in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
