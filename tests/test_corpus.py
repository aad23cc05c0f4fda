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
