"""The workstation CLI: thin wrappers that tests call through main(argv)."""
import numpy as np

from data.image import Image
from data.writers import write_png
from keras_codec.cli import main


def test_corpus_table(capsys):
    assert main(["corpus", "--split", "test"]) == 0
    out = capsys.readouterr().out
    for name in ("explicit_VR-UN.dcm", "RG3_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm",
                 "examples_palette.dcm", "image_dfl.dcm"):
        assert name in out
    assert "test: 5 distinct images" in out


def test_demo_on_a_folder_with_the_shipped_bundle(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:80]
    px = np.clip(30000 + 20000 * np.sin(x / 9.0) * np.cos(y / 6.0) + rng.normal(0, 200, x.shape), 0, 65535)
    src = tmp_path / "in"
    src.mkdir()
    write_png(src / "a.png", Image(pixels=px.astype(np.uint16)[None, :, :, None], bits_stored=16, signed=False))
    (src / "broken.png").write_text("not an image")
    assert main(["demo", "--dir", str(src), "--out", str(tmp_path / "out"), "--quality", "14"]) == 0
    out = capsys.readouterr().out
    assert "a.png" in out and "broken.png" in out and "failed" in out
    assert (tmp_path / "out" / "a.kcd").exists() and (tmp_path / "out" / "a.dcm").exists()


def test_bad_arguments_exit_nonzero(capsys):
    assert main(["eval", "--model", "/nonexistent/bundle"]) != 0
    assert "nonexistent" in capsys.readouterr().err


def test_encode_and_decode_are_the_edge_runtime(tmp_path, capsys):
    """keras-codec encode/decode take edge-codec's options, --max-error included."""
    from pydicom.data import get_testdata_file

    from data.readers import read_image

    src = get_testdata_file("CT_small.dcm")
    kcd, out = tmp_path / "ct.kcd", tmp_path / "ct.dcm"
    assert main(["encode", src, str(kcd), "--max-error", "1"]) == 0
    assert "max error 1" in capsys.readouterr().out
    assert main(["decode", str(kcd), str(out)]) == 0
    diff = read_image(out).pixels.astype(int) - read_image(src).pixels.astype(int)
    assert abs(diff).max() <= 1
    assert main(["encode", src, str(kcd)]) == 1  # exists: the edge runtime's error, exit status 1


def test_train_refine_stage_needs_a_bundle_and_steps(tmp_path, capsys):
    assert main(["train", "--stage", "refine", "--out", str(tmp_path / "r")]) == 2
    assert "--bundle" in capsys.readouterr().err
