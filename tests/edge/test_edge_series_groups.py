"""A series stream decodes group by group (codec.decode_frames): each group's slices are on disk before the
next group is decoded, so memory stays bounded by a group, not by the series."""
from __future__ import annotations

import sys
from pathlib import Path

from edge_runtime import series

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_edge_series import make_series  # noqa: E402


def test_decode_writes_each_group_before_decoding_the_next(tmp_path, bundle_path, monkeypatch):
    make_series(tmp_path / "s", n=12)
    kcd, out = tmp_path / "x.kcd", tmp_path / "out"
    series.encode_series(tmp_path / "s", kcd, bundle=str(bundle_path), jobs=1)
    real, seen = series.frame_groups, []

    def watched(*args, **kwargs):
        for first, pixels in real(*args, **kwargs):
            seen.append((first, len(pixels), len(list(out.iterdir()))))  # files on disk when this group arrives
            yield first, pixels

    monkeypatch.setattr(series, "frame_groups", watched)
    series.decode_series(kcd, out, bundle=str(bundle_path), jobs=1)
    assert len(seen) > 1 and sum(n for _, n, _ in seen) == 12
    assert [on_disk for _, _, on_disk in seen] == [first for first, _, _ in seen]

