"""Export a bundle's wavelet transforms to TFLite: ``encoder.tflite`` and ``decoder.tflite``
(and with ``--quant int8`` the post-filter as ``postfilter.tflite``), then check them against Keras.

``python -m export BUNDLE [--out DIR] [--quant float32|float16|int8] [--no-verify] [--report]``;
``keras-codec export`` runs the same :func:`main`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.conversion import QUANT_MODES, export_transforms
from export.verify import quantization_report, verify_export


def main(argv=None) -> int:
    """The export command line; 0 on success, 2 (one line on stderr) for a bundle or request it cannot export."""
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n")[0])
    parser.add_argument("bundle", help="model bundle directory")
    parser.add_argument("--out", default=None, help="write a copy of the bundle here (default: in place)")
    parser.add_argument("--quant", choices=QUANT_MODES, default="float32")
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument("--report", action="store_true",
                        help="also print, on the test split, the bpp/PSNR change of TFLite against Keras for "
                             "float32, float16 and int8, the BD-rate of int8 against float32, the bundle sizes "
                             "and the PSNR ceiling of a quantized lifting transform (minutes)")
    args = parser.parse_args(argv)
    try:
        section = export_transforms(args.bundle, args.out, quant=args.quant, progress=print)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or args.bundle)
    files = [section["encoder"], section["decoder"]]
    files += [section["postfilter_int8"]["file"]] if "postfilter_int8" in section else []
    for f in files:
        print(f"{out / f}: {(out / f).stat().st_size} bytes")
    print(f"signatures: {', '.join(section['signature_order'])}")
    if not args.no_verify:
        report = verify_export(out)
        if "postfilter_int8" in report:
            pf = report["postfilter_int8"]
            print(f"max |TFLite - Keras| = {report['max_abs_diff']:.3g} (encoder, inverse DWT); int8 post-filter: "
                  f"max |TFLite - Keras| = {pf['max_abs_diff_steps']:.3g} steps on random planes, equal to exact "
                  f"integer arithmetic: {'yes' if pf['equals_integer_reference'] else 'NO'}")
        else:
            print(f"max |TFLite - Keras| = {report['max_abs_diff']:.3g}")
    if args.report:
        quantization_report(out, args.quant)
    return 0


if __name__ == "__main__":
    sys.exit(main())
