"""Lossless JPEG 2000 sources read through data.j2k_decoder (OpenJPEG via imagecodecs, threaded): the same
pixels and the same decoding options as pydicom's pylibjpeg-openjpeg plugin, the same refusals."""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder

from data import InvalidImageError, j2k_decoder, read_image, readers
from data.corpus import PYDICOM, PYDICOM_DATA, package_dir

pytest.importorskip("imagecodecs")

SAMPLES = [
    (PYDICOM_DATA, "explicit_VR-UN.dcm"),  # 16-bit signed CT
    (PYDICOM_DATA, "US1_J2KR.dcm"),  # RGB, the reversible colour transform
    (PYDICOM_DATA, "MR2_J2KR.dcm"),  # 12-bit unsigned
    (PYDICOM_DATA, "emri_small_jpeg_2k_lossless.dcm"),  # 10 frames
    (PYDICOM, "J2K_pixelrep_mismatch.dcm"),  # the code stream's sign disagrees with the header's
    (PYDICOM, "GDCMJ2K_TextGBR.dcm"),
]


def _path(package, name):
    return package_dir(package) / name


def _as_array(ds, plugin):
    decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return decoder.as_array(ds, as_rgb=False, decoding_plugin=plugin)


@pytest.mark.parametrize("package,name", SAMPLES)
def test_same_pixels_and_options_as_pylibjpeg(package, name):
    ds = pydicom.dcmread(_path(package, name))
    plugin = readers._threaded_j2k(get_decoder(ds.file_meta.TransferSyntaxUID))
    assert plugin == j2k_decoder.LABEL
    ours, ours_meta = _as_array(ds, plugin)
    theirs, theirs_meta = _as_array(ds, "pylibjpeg")
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    assert ours_meta == theirs_meta
    image = read_image(_path(package, name))  # the reader's path goes through the plugin
    assert image.pixels.size == theirs.size


def test_threads_do_not_change_pixels():
    ds = pydicom.dcmread(_path(PYDICOM_DATA, "MR2_J2KR.dcm"))
    try:
        out = []
        for n in (1, 2, 3):
            j2k_decoder.set_threads(n)
            out.append(_as_array(ds, j2k_decoder.LABEL)[0])
    finally:
        j2k_decoder.set_threads(0)
    for a in out[1:]:
        np.testing.assert_array_equal(a, out[0])


def test_only_lossless_syntaxes():
    assert j2k_decoder.is_available(pydicom.uid.JPEG2000Lossless)
    assert not j2k_decoder.is_available(pydicom.uid.JPEG2000)  # irreversible: pydicom's own decoders
    assert not j2k_decoder.is_available(pydicom.uid.JPEGLSLossless)
    assert readers._threaded_j2k(get_decoder(pydicom.uid.JPEG2000)) == ""


def test_unavailable_without_imagecodecs(monkeypatch):
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # import fails
    assert not j2k_decoder.is_available(pydicom.uid.JPEG2000Lossless)


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.97])
def test_truncated_code_stream_refused(tmp_path, cut):
    ds = pydicom.dcmread(_path(PYDICOM_DATA, "explicit_VR-UN.dcm"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:int(len(frame) * cut) & ~1]])
    path = tmp_path / "cut.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InvalidImageError, match="cut.dcm"):
        read_image(path)


def test_cluster_workers_decode_on_one_thread(bundle_path, monkeypatch):
    import threading

    pytest.importorskip("distributed")
    from edge_runtime import cluster

    monkeypatch.setattr(j2k_decoder, "_threads", 0)
    monkeypatch.setattr(cluster, "_codecs", threading.local())
    assert j2k_decoder.threads() >= 1
    cluster._codec(bundle_path, "xnnpack")  # a worker thread's first task
    assert j2k_decoder.threads() == 1


def test_the_plugin_module_imports_no_pydicom():
    """Plane-pool and batch workers set the plugin's threads (runtime.load_worker_codec) and may never read a DICOM
    file: importing the plugin does not import pydicom (about 10 MiB more in every such worker)."""
    import subprocess
    import sys

    from pydicom import uid

    code = "import sys; from data import j2k_decoder; j2k_decoder.set_threads(1); print('pydicom' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert set(j2k_decoder.DECODER_DEPENDENCIES) == {uid.JPEG2000Lossless, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL}
