"""keras_codec.evaluation.speed: the classical codecs' file round trip, its command line, and the whole-process timer."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from data.image import Image
from data.readers import read_image
from data.writers import write_dicom
from keras_codec.evaluation import speed


@pytest.fixture()
def ct_dcm(tmp_path):
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:40, 0:48]
    px = np.clip(200 * np.sin(x / 5.0) + 300 * np.cos(y / 7.0) + rng.normal(0, 20, x.shape), -1024, 3000)
    image = Image(pixels=px.astype(np.int16)[None, :, :, None], bits_stored=16, signed=True, modality="CT")
    return write_dicom(tmp_path / "ct.dcm", image), image.pixels


@pytest.mark.parametrize("codec,param,bound", [("htj2k", None, 0), ("jpegls", 2, 2), ("jpeg2000", None, 0)])
def test_classical_file_round_trip(tmp_path, ct_dcm, codec, param, bound):
    src, px = ct_dcm
    c = speed.baseline(codec)
    n_bytes = speed.base_encode_file(c, param, src, tmp_path / "x.bin")
    info, planes = speed.read_stream(tmp_path / "x.bin")
    assert (info["rows"], info["cols"], info["signed"]) == (40, 48, True) and sum(map(len, planes)) == n_bytes
    speed.base_decode_file(c, tmp_path / "x.bin", tmp_path / "x.dcm", ref=src, lossless=param is None)
    back = read_image(tmp_path / "x.dcm")
    assert back.pixels.dtype == np.int16 and back.modality == "CT"
    assert np.abs(back.pixels.astype(int) - px).max() <= bound
    assert str(back.dataset.LossyImageCompression) == ("00" if param is None else "01")


def test_htj2k_lossy_is_lossy_and_searchable(ct_dcm):
    from keras_codec.evaluation.baselines import PSNRSearch

    _, px = ct_dcm
    row = PSNRSearch(speed.baseline("htj2k"), px, bits_stored=16).seek(40.0)
    assert 40.0 <= row["psnr"] < 80 and row["max_abs_err"] > 0


def test_cli_codes_a_folder(tmp_path, ct_dcm):
    src, px = ct_dcm
    folder = src.parent
    assert speed._cli(["encode", "jpegls", str(folder), str(tmp_path / "bins")]) == 0
    assert speed._cli(["decode", "jpegls", str(tmp_path / "bins"), str(tmp_path / "out"), "--ref", str(folder)]) == 0
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "ct.dcm").pixels, px)


def test_run_process_times_runs_and_reports_failures(tmp_path):
    out = tmp_path / "made"
    result = speed.run_process([sys.executable, "-c", f"open({str(out)!r}, 'x').write('1')"], runs=3,
                               log=tmp_path / "log", clean=[out])
    assert result["runs"] == 3 and len(result["times"]) == 3 and min(result["times"]) > 0
    assert 5 < result["peak_rss_mib"] < 200 and out.exists()  # `clean` removed it before every run
    with pytest.raises(RuntimeError, match="exited with 3"):
        speed.run_process([sys.executable, "-c", "import sys; sys.stderr.write('bad input'); sys.exit(3)"], runs=2,
                          log=tmp_path / "log")
    slow = speed.run_process([sys.executable, "-c", "import time; time.sleep(0.3)"], runs=5, log=tmp_path / "log",
                             budget_s=0.1)
    assert slow["runs"] == 1 and "1 run" in slow["note"]
