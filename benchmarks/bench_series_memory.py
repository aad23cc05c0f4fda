"""Memory of a series encode and decode against its length: a group's worth, not the series'.

    .venv-edge/bin/python benchmarks/bench_series_memory.py [--slices 32,64,128,256] [--quality 14]
                                                          [--ref-src DIR] [--out out/bench]

A CT series folder of N single-slice DICOM files is written from the corpus test CT volume
(lung2_image.nrrd; its slices repeated in order to reach N, 2.5 mm apart, Pixel Padding Value -1024
so the padding map is exercised), then ``edge-codec encode --series DIR OUT.kcd -q Q`` and
``edge-codec decode OUT.kcd OUTDIR`` run as whole processes. Each is timed once after a warm-up
(keras_codec.evaluation.speed.run_process): wall time, and peak RSS of the largest process and of the
process tree (sampled every 20 ms: the plane workers count). ``--ref-src DIR`` runs the same commands
with another checkout's ``edge_runtime`` (and ``data``) first on sys.path, in the same run, as the reference.
The volume itself (N x 512 x 512 x 2 bytes) is printed beside, for scale. Prints a table and writes
series_memory.csv and series_memory.png into --out.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.corpus import load_volume, volumes  # noqa: E402
from keras_codec.evaluation import speed  # noqa: E402

PADDING = -1024


def write_series(volume: np.ndarray, n: int, folder: Path) -> None:
    """N slices of `volume` (slices, rows, cols) as CT Image Storage files, in order, 2.5 mm apart."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series_uid, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    for k in range(n):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series_uid, frame_of_ref
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Series^Memory", "M1"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "20260101", "120000", "", ""
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "1", 1, k + 1, "bench"
        ds.ImagePositionPatient = ["-180.0", "-180.0", f"{2.5 * k:.1f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing, ds.SliceThickness = ["0.7", "0.7"], "2.5"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1:3]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
        ds.PixelPaddingValue = PADDING
        ds.PixelData = np.ascontiguousarray(volume[k % len(volume)].astype("<i2")).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(folder / f"IM{k + 1:04d}.dcm", enforce_file_format=True)


def measure(label: str, ref, n: int, folder: Path, tmp: Path, quality: int, log: Path) -> list:
    """Encode and decode rows of one build on one series folder."""
    stream, out_dir = tmp / f"{label}_{n}.kcd", tmp / f"{label}_{n}_out"
    cmd = speed.edge_codec_command() if ref is None else [
        sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ref)!r}); from edge_runtime.cli import main; "
                              f"sys.exit(main())"]
    rows = []
    for op, argv, clean in (("encode", cmd + ["encode", "--series", str(folder), str(stream), "-q", str(quality),
                                               "--force"], [stream]),
                            ("decode", cmd + ["decode", str(stream), str(out_dir)], [out_dir])):
        r = speed.run_process(argv, runs=1, log=log / f"{label}_{op}_{n}", clean=clean, sample=0.02)
        rows.append({"build": label, "slices": n, "operation": op, "wall_s": round(r["times"][0], 2),
                     "peak_mib": round(r["peak_rss_mib"], 1), "tree_mib": round(r["tree_mib"], 1),
                     "volume_mib": round(n * 512 * 512 * 2 / 2 ** 20, 1),
                     "stream_bytes": stream.stat().st_size if stream.exists() else 0})
        print(f"{label:9s} {n:4d} slices {op:6s} {rows[-1]['wall_s']:7.2f} s  peak {rows[-1]['peak_mib']:7.1f} MiB  "
              f"tree {rows[-1]['tree_mib']:7.1f} MiB  (volume {rows[-1]['volume_mib']:.0f} MiB)", flush=True)
    return rows


def plot(rows: list, path: Path) -> None:
    import matplotlib  # plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, op in zip(axes, ("encode", "decode")):
        for build in sorted({r["build"] for r in rows}):
            pts = [(r["slices"], r["tree_mib"]) for r in rows if r["build"] == build and r["operation"] == op]
            ax.plot(*zip(*pts), "o-", label=f"{build} (process tree)")
        pts = sorted({(r["slices"], r["volume_mib"]) for r in rows})
        ax.plot(*zip(*pts), "k:", label="the volume itself")
        ax.set(title=f"series {op}", xlabel="slices", ylabel="peak RSS (MiB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", default="32,64,128,256")
    ap.add_argument("--quality", type=int, default=14)
    ap.add_argument("--ref-src", type=Path, help="another checkout whose edge_runtime is the reference build")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench")
    args = ap.parse_args(argv)
    item = next(v for v in volumes("test") if v.modality == "CT")
    volume = load_volume(item).pixels[..., 0]
    args.out.mkdir(parents=True, exist_ok=True)
    builds = [("this", None)] + ([("reference", args.ref_src.resolve())] if args.ref_src else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in (int(s) for s in args.slices.split(",")):
            folder = tmp / f"series_{n}"
            write_series(volume, n, folder)
            for label, ref in builds:
                rows += measure(label, ref, n, folder, tmp, args.quality, tmp)
            shutil.rmtree(folder)
    with open(args.out / "series_memory.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, args.out / "series_memory.png")
    print(f"cores: {os.cpu_count()}; wrote {args.out}/series_memory.csv and series_memory.png")


if __name__ == "__main__":
    main()
