"""`edge-codec encode --group N`: the group length of multi-frame images, one file, a folder and a series."""
from __future__ import annotations

import numpy as np
import pytest

from data.image import Image
from data.readers import read_image
from data.writers import write_dicom
from edge_runtime import bitstream as bs
from edge_runtime import runtime
from edge_runtime.cli import main
from test_edge_series import make_series


@pytest.fixture(scope="module")
def cine(tmp_path_factory):
    """A 6-frame 12-bit image whose frames drift a little: prediction pays between them."""
    rng = np.random.default_rng(5)
    r, c = np.mgrid[0:32, 0:40]
    scene = 1500 + 600 * np.sin(r / 4.0) * np.cos(c / 6.0) + 200 * rng.random((32, 40))
    frames = [np.roll(scene, f, axis=1) + rng.normal(0, 2, scene.shape) for f in range(6)]
    pixels = np.clip(np.round(np.stack(frames)), 0, 4095).astype(np.uint16)[..., None]
    path = tmp_path_factory.mktemp("cine") / "cine.dcm"
    write_dicom(path, Image(pixels=pixels, bits_stored=12, signed=False, modality="US"))
    return path


@pytest.mark.parametrize("group, version", [(None, bs.GROUPS_VERSION), (3, bs.GROUPS_VERSION), (1, bs.FORMAT_VERSION)])
def test_the_group_length_asked_for_is_the_streams(cine, tmp_path, bundle_path, group, version):
    out = tmp_path / "c.kcd"
    args = ["encode", str(cine), str(out), "--quality", "14", "--bundle", str(bundle_path)]
    assert main(args + ([] if group is None else ["--group", str(group)])) == 0
    header = bs.read_header(out.read_bytes())
    assert header.version == version
    if version == bs.GROUPS_VERSION:
        assert header.group == (group or min(8, header.frames))  # the default: 8 frames, at most the image's
    decoded, _ = runtime.decode_image(out.read_bytes(), coder=runtime.load_codec(bundle_path)[1])
    assert decoded.frames == 6


def test_group_one_is_the_frame_by_frame_stream(cine, tmp_path, bundle_path):
    a, b = tmp_path / "a.kcd", tmp_path / "b.kcd"
    runtime.encode_file(cine, a, quality=14, bundle=bundle_path, group=1)
    image = read_image(cine)
    bundle, coder = runtime.load_codec(bundle_path)
    plain = runtime.encode_image(image, coder=coder, model_id=bundle.model_id, quality=14,
                                 metadata=runtime.dicom_metadata(image.dataset), inter=False,
                                 tile=int(bundle.manifest.get("tile", 2048)))
    assert a.read_bytes() == plain


def test_a_folder_and_a_series_take_the_group_too(cine, tmp_path, bundle_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "cine.dcm").write_bytes(cine.read_bytes())
    assert main(["encode", str(folder), str(tmp_path / "out"), "-q", "14", "--group", "2",
                 "--bundle", str(bundle_path)]) == 0
    assert bs.read_header((tmp_path / "out" / "cine.kcd").read_bytes()).group == 2
    make_series(tmp_path / "s", n=5)
    kcd = tmp_path / "s.kcd"
    assert main(["encode", "--series", str(tmp_path / "s"), str(kcd), "-q", "14", "--group", "4",
                 "--bundle", str(bundle_path)]) == 0
    header = bs.read_header(kcd.read_bytes())
    assert header.series and header.group == 4


@pytest.mark.parametrize("bad", ["0", "-2", "x"])
def test_a_bad_group_is_refused_before_anything_is_written(cine, tmp_path, bundle_path, bad, capsys):
    out = tmp_path / "c.kcd"
    with pytest.raises(SystemExit) as stop:
        main(["encode", str(cine), str(out), "--group", bad, "--bundle", str(bundle_path)])
    assert stop.value.code == 2 and not out.exists()
    with pytest.raises(ValueError, match="group"):
        runtime.group_options(0)
