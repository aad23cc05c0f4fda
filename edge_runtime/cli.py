"""`edge-codec`: the TensorFlow-free command line for carts and tablets.

    edge-codec encode IN OUT.kcd [--quality Q] [--bundle B] [--force]
    edge-codec decode IN.kcd OUT.(dcm|png|tif) [--bundle B] [--force]
    edge-codec info IN.kcd
    edge-codec verify IN.kcd [--bundle B]

Every subcommand takes `--kernels xnnpack|reference` (TFLite's optimized or reference kernels).
A bad file, an existing output or a bundle problem gives one line on stderr naming the file and
exit status 1; the work is in edge_runtime.runtime.
"""
from __future__ import annotations

import argparse
import sys

EXIT_ERROR = 1
EXIT_INTERNAL = 3


def build_parser() -> argparse.ArgumentParser:
    from edge_runtime import __version__
    from edge_runtime.codec import QUALITY_LEVELS
    from edge_runtime.runtime import DEFAULT_QUALITY

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kernels", choices=("xnnpack", "reference"), default="xnnpack",
                        help="TFLite kernels: xnnpack (fast, default) or reference (portable)")
    bundle = argparse.ArgumentParser(add_help=False)
    bundle.add_argument("--bundle", metavar="B", default=None,
                        help="model bundle folder (default: the one shipped in edge_runtime/models/default)")
    force = argparse.ArgumentParser(add_help=False)
    force.add_argument("--force", action="store_true", help="replace OUT if it exists")

    p = argparse.ArgumentParser(prog="edge-codec", description="keras_codec edge runtime (no TensorFlow)")
    p.add_argument("--version", action="version", version=f"edge-codec {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{encode,decode,info,verify}")

    enc = sub.add_parser("encode", parents=[common, bundle, force], help="DICOM/PNG/TIFF -> .kcd")
    enc.add_argument("input", metavar="IN")
    enc.add_argument("output", metavar="OUT.kcd")
    enc.add_argument("--quality", "-q", type=int, default=DEFAULT_QUALITY, choices=QUALITY_LEVELS, metavar="Q",
                     help=f"{QUALITY_LEVELS[0]}..{QUALITY_LEVELS[-1]}, higher is better "
                          f"(about 12 + 2Q dB; default {DEFAULT_QUALITY})")

    dec = sub.add_parser("decode", parents=[common, bundle, force], help=".kcd -> DICOM/PNG/TIFF")
    dec.add_argument("input", metavar="IN.kcd")
    dec.add_argument("output", metavar="OUT.(dcm|png|tif)")

    inf = sub.add_parser("info", parents=[common, bundle], help="what a .kcd holds")
    inf.add_argument("input", metavar="IN.kcd")

    ver = sub.add_parser("verify", parents=[common, bundle], help="CRC, model id and a full decode")
    ver.add_argument("input", metavar="IN.kcd")
    return p


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc):
        text = f"{exc.filename}: {exc.strerror or exc}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _print_info(d: dict) -> None:
    known = {True: f"yes, {d['bundle']}", False: f"no, not {d['bundle']}",
             None: f"unknown, no readable bundle at {d['bundle']}"}[d["model_known"]]
    rows = [
        ("file", d["file"]),
        ("geometry", f"{d['rows']} x {d['cols']}, {d['frames']} frame(s), {d['samples']} sample(s)"),
        ("pixels", f"{d['dtype']}, {d['bits_stored']} bits stored, {d['photometric']}"),
        ("model id", f"{d['model_id']} (known: {known})"),
        ("quality", f"{d['quality']} ({d['mode']})"),
        ("coding", f"up to {d['levels']} wavelet levels, tiles {d['tile'][0]} x {d['tile'][1]} ({d['tiles']} in all)"),
        ("bytes", f"{d['bytes']} ({d['pixel_bytes']} pixel stream)"),
        ("bpp", f"{d['bpp']:.4f} (ratio {d['ratio']:.2f}:1)"),
        ("metadata", f"DICOM header, {d['metadata_bytes']} bytes" if d["has_metadata"] else "none"),
    ]
    for k, v in rows:
        print(f"{k + ':':10s} {v}")


def _run(args) -> int:
    from edge_runtime import runtime

    if args.command == "encode":
        r = runtime.encode_file(args.input, args.output, quality=args.quality, bundle=args.bundle,
                                force=args.force, kernels=args.kernels)
        print(f"{r['output']}: {r['bytes']} bytes, {r['bpp']:.3f} bpp, ratio {r['ratio']:.2f}:1")
    elif args.command == "decode":
        r = runtime.decode_file(args.input, args.output, force=args.force, bundle=args.bundle,
                                kernels=args.kernels)
        print(f"{r['output']}: {r['rows']} x {r['cols']}, {r['frames']} frame(s)")
    elif args.command == "info":
        _print_info(runtime.info(args.input, bundle_path=args.bundle))
    else:
        r = runtime.verify(args.input, bundle=args.bundle, kernels=args.kernels)
        print(f"{r['file']}: OK (CRC, model {r['model_id'][:12]}, full decode)")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from data.image import InvalidImageError
    from edge_runtime.bitstream import InvalidBitstreamError
    from edge_runtime.bundle import InvalidBundleError

    try:
        return _run(args)
    except (InvalidBitstreamError, InvalidImageError, InvalidBundleError, FileExistsError, ValueError,
            OSError, RuntimeError) as exc:
        msg = _one_line(exc)
        named = [n for n in (args.input, getattr(args, "output", None), args.bundle) if n]
        if not any(n in msg for n in named):
            msg = f"{args.input}: {msg}"
        print(f"edge-codec {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"edge-codec {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback: say what failed and where
        print(f"edge-codec {args.command}: internal error on {args.input}: {type(exc).__name__}: "
              f"{_one_line(exc)}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
