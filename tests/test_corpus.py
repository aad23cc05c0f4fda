"""The sample corpus: split, deduplication, table and summary, found without network."""
from __future__ import annotations

import importlib.util

import pytest

from data import corpus as corpus_module
from data.corpus import (CorpusItem, MANIFEST, corpus, corpus_path, corpus_table, excluded, load, package_dir,
                         pixel_hash, summary)

TEST_NAMES = {"explicit_VR-UN.dcm", "RG3_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm",
              "examples_palette.dcm", "image_dfl.dcm"}


def test_both_splits_and_the_test_names():
    train, test = corpus("train"), corpus("test")
    assert train and test
    assert {item.name for item in test} == TEST_NAMES
    assert not {item.name for item in train} & TEST_NAMES
    assert all(item.split == "train" for item in train) and all(item.split == "test" for item in test)
    assert corpus() == train + test


def test_every_manifest_file_is_kept_or_explained():
    kept = {item.name for item in corpus()}
    left_out = excluded()
    assert kept | set(left_out) == {name for name, _, _ in MANIFEST}
    assert not kept & set(left_out)


def test_no_duplicate_pixels():
    hashes = [item.pixel_hash for item in corpus()]
    assert len(hashes) == len(set(hashes))


def test_items_describe_their_pixels():
    item = next(i for i in corpus("test") if i.name == "explicit_VR-UN.dcm")
    assert (item.modality, item.rows, item.cols, item.frames, item.samples) == ("CT", 512, 512, 1, 1)
    assert item.signed and item.photometric == "MONOCHROME2"
    image = load(item)
    assert pixel_hash(image.pixels) == item.pixel_hash
    palette = next(i for i in corpus("test") if i.name == "examples_palette.dcm")
    assert (palette.photometric, palette.samples, palette.bits_stored) == ("RGB", 3, 8)  # a table of 8-bit colours


def test_corpus_is_cached_and_immutable():
    first = corpus("train")
    first.clear()
    assert corpus("train")
    assert isinstance(corpus()[0], CorpusItem)
    with pytest.raises(AttributeError):
        corpus()[0].name = "x"


def test_table_contains_every_name():
    items = corpus()
    table = corpus_table(items)
    for item in items:
        assert item.name in table
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["file", "modality"] and len(lines) == len(items) + 2
    assert "1955x1841" in table and "350x800x3" in table


def test_summary_counts_distinct_images_per_modality_per_split():
    items = corpus()
    counts = summary(items)
    assert list(counts) == ["train", "test"]
    assert sum(sum(c.values()) for c in counts.values()) == len(items)
    assert counts["test"] == {"CR": 1, "CT": 1, "MR": 1, "OT": 1, "US": 1}


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        corpus("validation")


def test_files_found_without_network(monkeypatch):
    import pydicom.data

    def no_download(*args, **kwargs):
        raise AssertionError("the corpus must not call pydicom's downloading helpers")

    monkeypatch.setattr(pydicom.data, "get_testdata_file", no_download)
    monkeypatch.setattr(pydicom.data, "get_testdata_files", no_download)
    corpus_module._build.cache_clear()
    corpus_module._corpus.cache_clear()
    assert len(corpus()) == len(MANIFEST) - len(excluded())
    assert package_dir("pydicom").name == "test_files"


def test_missing_package_names_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "data_store" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install pydicom-data"):
        package_dir("pydicom-data")


def test_missing_file_names_the_package():
    with pytest.raises(FileNotFoundError, match="no_such_file.dcm.*pydicom-data"):
        corpus_path("no_such_file.dcm", "pydicom-data")


# --------------------------------------------------------------------------- volumes

VOLUME_SPLITS = {"train": {"lung1_image.nrrd", "brain1_image.nrrd", "emri_small.dcm", "eCT_Supplemental.dcm",
                           "OBXXXX1A_2frame.dcm"},
                 "test": {"lung2_image.nrrd", "brain2_image.nrrd", "color3d_jpeg_baseline.dcm"}}


def test_volumes_split_one_ct_and_one_mr_of_pyradiomics_each():
    for split, names in VOLUME_SPLITS.items():
        items = corpus_module.volumes(split)
        assert {v.name for v in items} == names and all(v.split == split for v in items)
        nrrd = [v for v in items if v.source == corpus_module.PYRADIOMICS]
        assert sorted(v.modality for v in nrrd) == ["CT", "MR"]
    assert corpus_module.volumes() == corpus_module.volumes("train") + corpus_module.volumes("test")
    with pytest.raises(ValueError, match="split"):
        corpus_module.volumes("validation")


def test_volumes_leave_the_2d_corpus_as_it_was():
    assert {i.name for i in corpus("test")} == TEST_NAMES
    assert not {v.name for v in corpus_module.volumes()} & {i.name for i in corpus("test")}


def test_volume_items_describe_their_files():
    lung2 = next(v for v in corpus_module.volumes("test") if v.name == "lung2_image.nrrd")
    assert (lung2.modality, lung2.frames, lung2.rows, lung2.cols, lung2.samples) == ("CT", 61, 512, 512, 1)
    assert lung2.spacing[2] == pytest.approx(5.0)
    brain1 = next(v for v in corpus_module.volumes("train") if v.name == "brain1_image.nrrd")
    assert (brain1.frames, brain1.rows, brain1.cols) == (25, 256, 256)
    assert brain1.spacing == pytest.approx((0.78125, 0.78125, 6.5))
    cine = next(v for v in corpus_module.volumes("test") if v.name == "color3d_jpeg_baseline.dcm")
    assert (cine.frames, cine.samples, cine.lossy_source) == (120, 3, True)


def test_load_volume_gives_slices_as_frames():
    brain2 = next(v for v in corpus_module.volumes("test") if v.name == "brain2_image.nrrd")
    image = corpus_module.load_volume(brain2)
    assert image.pixels.shape == (23, 256, 256, 1) and image.pixels.dtype.name == "int16"
    assert image.signed and image.bits_stored == 16 and image.modality == "MR"
    assert 0 <= image.pixels.min() < image.pixels.max() <= 4095
    emri = next(v for v in corpus_module.volumes("train") if v.name == "emri_small.dcm")
    assert corpus_module.load_volume(emri).pixels.shape == (10, 64, 64, 1)


def test_missing_volume_names_the_fetch_command(monkeypatch, tmp_path):
    monkeypatch.setenv(corpus_module.VOLUMES_ENV, str(tmp_path))
    corpus_module._volume_item.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="lung1_image.nrrd.*make volumes"):
            corpus_module.volumes("train")
    finally:
        monkeypatch.undo()
        corpus_module._volume_item.cache_clear()


def test_fetch_checks_every_file_against_its_hash(tmp_path):
    import io
    import tarfile

    sdist = tmp_path / "pyradiomics-3.0.1.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name in corpus_module.NRRD_SHA256:
            blob = b"not the real volume"
            info = tarfile.TarInfo(f"pyradiomics-3.0.1/data/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(RuntimeError, match="SHA-256"):
        corpus_module.fetch_volumes(tmp_path / "v", sdist=sdist, progress=lambda *_: None)
    assert not [p for p in (tmp_path / "v").iterdir() if p.suffix == ".nrrd"]  # nothing unchecked left in place
    # the files fetched at set-up pass (kept as they are, nothing downloaded)
    said = []
    assert corpus_module.fetch_volumes(progress=said.append) == corpus_module.volumes_dir()
    assert said and "all 4" in said[0]
