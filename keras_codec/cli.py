"""`keras-codec`: the workstation command line. Thin: parsing and printing here, the work elsewhere.

Each subcommand imports what it needs inside its function (one import per subcommand): `demo`, `corpus`,
`encode`, `decode` and `bench` (edge backend) run without TensorFlow, as in the TensorFlow-free venv of
`make demo`, and `keras-codec --help` starts at once (so the shipped bundle's path, which needs NumPy, is
looked up only when a command uses it). `train`, `eval` and `export` need the workstation install; without
it they say so in one line. `train` with a recipe imports its strategy before the rest of training, as
TensorFlow's multi-worker strategy must exist before any other op.
"""
from __future__ import annotations

import argparse
import importlib.util
import platform
import shlex
import sys

from keras_codec import __version__
from keras_codec.config import CodecConfig, named

TRAINING_STACK = ("tensorflow", "tensorflow_compression", "keras", "tf_keras")
"""Top-level modules of the training stack: only the workstation install (Python 3.11, requirements.txt) has them."""
WORKSTATION = "the workstation install (Python 3.11 + TensorFlow 2.14: `make setup`, then .venv/bin/keras-codec)"


def _cmd_corpus(args) -> int:
    from data.corpus import corpus, corpus_table, excluded, summary

    items = corpus(args.split)
    print(corpus_table(items))
    print()
    counts = summary(items)
    for split, per in counts.items():
        print(f"{split}: {sum(per.values())} distinct images  " +
              ", ".join(f"{m} {n}" for m, n in sorted(per.items())))
    for name, why in excluded().items():
        print(f"excluded {name}: {why}")
    return 0


def _cmd_demo(args) -> int:
    from data.corpus import corpus, corpus_table
    from keras_codec.evaluation.demo import run_demo

    if args.dir is None:
        print("keras_codec sample corpus (pydicom + pydicom-data):")
        print(corpus_table(corpus()))
        print()
    rows = run_demo(args.dir, out_dir=args.out, quality=args.quality)
    return 0 if rows else 1


def _cmd_train(args) -> int:
    if args.data or args.recipe or args.from_bundle is not None:
        return _train_recipe(args)
    from keras_codec.training import stages

    cfg = CodecConfig.from_json(open(args.config).read()) if args.config.endswith(".json") else named(args.config)
    if args.lmbda is not None:
        cfg = cfg.replace(**{"train.lmbda": args.lmbda})
    cfg = cfg.replace(**{"train.seed": args.seed})
    print(cfg.to_json())
    if cfg.name == "default" and args.stage == "refine" and (not args.bundle or args.steps <= 0):
        print("keras-codec train --stage refine needs --bundle (the model to refine) and --steps > 0",
              file=sys.stderr)
        return 2
    kind, res = stages.train_config(cfg, args.out, stage=args.stage, steps=args.steps, seed=args.seed,
                                    init_only=args.init_only, bundle=args.bundle, bundle_out=args.bundle_out)
    if kind == "refine":
        print(f"refinement weights {res['weights']}" + (f", bundle {args.bundle_out}" if args.bundle_out else ""))
    elif kind == "fit":
        print(f"bundle written to {args.out}: model id {res['model_id'][:16]}..., "
              f"{res['planes']} planes, {res['wall_seconds']:.1f} s")
    else:
        print(res)
    return 0


def _train_recipe(args) -> int:
    """`keras-codec train --data DIR... --out RUN [--recipe R] [--from [BUNDLE]]`: the whole recipe, resumable."""
    # the strategy first: TensorFlow's multi-worker strategy must exist before any other op (and is refused)
    from keras_codec.training.loop import default_strategy

    strategy = default_strategy()
    from keras_codec.training import data as tdata, pipeline, recipe as recipes

    recipe = recipes.load_recipe(args.recipe or "default")
    if args.split_by:
        recipe = recipe.replace(split_by=args.split_by)
    if args.seed_given:
        recipe = recipe.replace(seed=args.seed)

    def say(line):
        print(line, file=sys.stderr, flush=True)

    say(f"recipe {recipe.name} (digest {recipe.digest()[:12]}...), "
        f"{len(recipe.finetune if args.from_bundle else recipe.stages)} stages, "
        f"{strategy.num_replicas_in_sync} replica(s) ({type(strategy).__name__})")
    data = tdata.recipe_data(args.data, recipe, progress=say)
    res = pipeline.run_recipe(recipe, data, args.out, from_bundle=args.from_bundle, strategy=strategy, progress=say,
                              report=not args.no_report, corpus=not args.data)
    print(f"bundle {res['bundle']} (model id {res['model_id'][:16]}...)")
    if res["report"]:
        print(f"mean BD-rate vs JPEG 2000 on {len(data.val)} held-out images: "
              f"{res['report']['mean_bd_rate_vs_jpeg2000']:+.2f} % ({args.out}/report)")
    print(f"decode with: edge-codec decode IN.kcd OUT.dcm --bundle {res['bundle']}")
    return 0


def _cmd_install_bundle(args) -> int:
    from keras_codec.training.pipeline import install_bundle

    model_id, kept = install_bundle(args.run, args.to or _default_model(), force=args.force,
                                    keep_previous=not args.drop_previous)
    print(f"installed {args.run}/bundle into {args.to or _default_model()} (model id {model_id[:16]}...)")
    if kept is not None:
        print(f"kept the bundle it replaced in {kept}: the default decoder still decodes its streams")
    return 0


def _cmd_eval(args) -> int:
    from keras_codec.evaluation.evaluate import evaluate_bundle

    qualities = [int(q) for q in args.qualities.split(",")] if args.qualities else None
    res = evaluate_bundle(args.model, folder=args.dir, qualities=qualities, out_dir=args.out)
    print(f"model {res['model_id'][:16]}...  wrote {args.out}/eval.csv and {args.out}/rd_curves.png")
    return 0


def _cmd_bench(args) -> int:
    from keras_codec.evaluation.bench import SECTION_KEYS, SECTIONS, run_bench

    parts = ["keras-codec", "bench"] + [f"--model {shlex.quote(m)}" for m in args.models or []]
    parts += [f"--dir {shlex.quote(args.dir)}"] if args.dir else []
    parts += [f"--backend {args.backend}"] if args.backend != "auto" else []
    parts += [f"--speed --runs {args.runs} --threads {args.threads}"] if args.speed else []
    parts += [f"--speed-quality {args.speed_quality}"] if args.speed and args.speed_quality else []
    parts += [f"--out {shlex.quote(args.out)}"] if args.out != "out/bench" else []
    parts += [f"--only {args.only}"] if args.only else []
    command = " ".join(parts)
    sections = None
    if args.only:
        wanted = args.only.split(",")
        unknown = [w for w in wanted if w not in SECTION_KEYS]
        if unknown:
            raise ValueError(f"--only: unknown section {', '.join(unknown)}; choose from {', '.join(SECTION_KEYS)}")
        sections = [sec for key, sec in zip(SECTION_KEYS, SECTIONS) if key in wanted]
    res = run_bench(args.models, folder=args.dir, out_dir=args.out, backend=args.backend, speed=args.speed,
                    runs=args.runs, threads=args.threads, speed_quality=args.speed_quality, sections=sections,
                    progress=lambda s: print(s, flush=True), command=command)
    print()
    print(res["markdown"])
    if sections is not None:
        print(f"wrote {res['out_dir']}/results.md and the CSV / PNG files of its sections")
        return 0 if "\n## " in res["markdown"] else 1
    print(f"wrote {res['out_dir']}/results.md, points.csv, bd_rate.csv, lossless.csv and the RD curves (PNG)")
    return 0 if res["results"] else 1


def _cmd_export(args) -> int:
    from export.__main__ import main as export_main

    argv = [args.model, "--quant", args.quant] + (["--out", args.out] if args.out else [])
    argv += ["--report"] if args.report else []
    return export_main(argv)


def _cmd_edge(args) -> int:
    """`keras-codec encode|decode ...` runs `edge-codec encode|decode ...`: one codec, one set of options."""
    from edge_runtime.cli import main as edge_main

    return edge_main([args.command] + list(args.args))


def _default_model() -> str:
    from edge_runtime.bundle import default_bundle_path

    return str(default_bundle_path())


def _default_model_lazy() -> str:
    """Marker of `--from` given without a value: the shipped bundle (resolved after parsing)."""
    return _default_model()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="keras-codec", description="keras_codec: a learned codec for medical images")
    p.add_argument("--version", action="version", version=f"keras-codec {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("corpus", help="list the sample corpus and its train/test split")
    c.add_argument("--split", choices=["train", "test"], default=None)
    c.set_defaults(func=_cmd_corpus)

    t = sub.add_parser("train", help="train a model: with --data/--recipe/--from, every stage of a recipe "
                                      "(resumable, ends with a bundle and an RD report); else one stage (--config)")
    t.add_argument("--data", nargs="+", default=None, metavar="DIR",
                   help="folders (or files) of your images: DICOM (files, series folders, multi-frame), PNG, TIFF, "
                        "NIfTI; a validation part is split off by patient/study (default with --recipe/--from "
                        "and no --data: the sample corpus, its test split for the report)")
    t.add_argument("--recipe", default=None, help="'default' (what ships), 'quick' or a recipe .json "
                                                  "(keras_codec.training.recipe)")
    t.add_argument("--from", dest="from_bundle", nargs="?", const=_default_model_lazy, default=None, metavar="BUNDLE",
                   help="fine-tune this bundle with the recipe's finetune stages (no value: the shipped one)")
    t.add_argument("--split-by", choices=["patient", "file"], default=None,
                   help="validation split by DICOM patient/study (default) or by file")
    t.add_argument("--no-report", action="store_true", help="skip the RD report on the held-out images")
    t.add_argument("--config", default="default", help="'default', 'paper' or a config .json")
    t.add_argument("--lmbda", type=float, default=None)
    t.add_argument("--steps", type=int, default=0)
    t.add_argument("--seed", type=int, default=None, help="seed (with a recipe: replaces the recipe's; default 0)")
    t.add_argument("--init-only", action="store_true", help="default: write the untrained (step 0) bundle")
    t.add_argument("--out", required=True, help="run / bundle directory")
    t.add_argument("--stage", choices=["fit", "refine"], default="fit",
                   help="default config: 'fit' the context model (stage 1, writes a bundle to --out) or "
                        "'refine': train the learned lifting refinement jointly with the in-graph entropy model "
                        "from --bundle for --steps (a resumable run in --out; keras_codec.training.refine)")
    t.add_argument("--bundle", default=None, help="--stage refine: the bundle to refine")
    t.add_argument("--bundle-out", default=None, help="--stage refine: write the refined bundle (context refitted)")
    t.set_defaults(func=_cmd_train)

    ib = sub.add_parser("install-bundle", help="install a training run's bundle (RUN/bundle) as the edge "
                                                "runtime's default model")
    ib.add_argument("run", help="the run folder of keras-codec train")
    ib.add_argument("--to", default=None, help="model folder (default: edge_runtime/models/default)")
    ib.add_argument("--force", action="store_true", help="replace the bundle already there")
    ib.add_argument("--drop-previous", action="store_true",
                    help="with --force: delete the replaced bundle instead of keeping it beside the new one as "
                         "FOLDER-<its model id> (kept, the default decoder still decodes the streams it wrote)")
    ib.set_defaults(func=_cmd_install_bundle)

    e = sub.add_parser("eval", help="rate-distortion of a model bundle against JPEG 2000")
    e.add_argument("--model", default=None, help="bundle directory (default: the shipped one)")
    e.add_argument("--dir", default=None, help="a folder of images instead of the test split")
    e.add_argument("--qualities", default=None, help="comma-separated quality levels (default: all levels)")
    e.add_argument("--out", default="out/eval")
    e.set_defaults(func=_cmd_eval)

    x = sub.add_parser("export", help="add TFLite encoder/decoder graphs to a model bundle")
    x.add_argument("--model", default=None, help="bundle directory (default: the shipped one)")
    x.add_argument("--quant", choices=["float32", "float16", "int8"], default="float32",
                   help="the learned post-filter's precision; the lifting transforms stay float32. int8: a "
                        "full-integer postfilter.tflite calibrated on the train split, bit-identical across "
                        "TFLite kernels (float16: float16 kernels)")
    x.add_argument("--out", default=None, help="write a copy of the bundle here (default: in place)")
    x.add_argument("--report", action="store_true",
                   help="print, on the test split, the bpp/PSNR change of TFLite against Keras for float32, "
                        "float16 and int8, the BD-rate of int8 against float32 and the bundle sizes (minutes)")
    x.set_defaults(func=_cmd_export)

    for name, what in (("encode", "image (or folder) -> .kcd: --quality, --max-error D (0 = lossless), "
                                  "--target-psnr, --target-bpp"),
                       ("decode", ".kcd (or folder) -> DICOM/PNG/TIFF")):
        k = sub.add_parser(name, help=f"{what}; the edge runtime's, same options as edge-codec {name}",
                           add_help=False)
        k.add_argument("args", nargs=argparse.REMAINDER)
        k.set_defaults(func=_cmd_edge)

    d = sub.add_parser("demo", help="the main job on the shipped model and the sample corpus")
    d.add_argument("--dir", default=None, help="a folder of your own images instead of the test split")
    d.add_argument("--quality", type=int, default=None,
                   help="quality of the written .kcd/.dcm files and first of the levels shown "
                   "(default: the edge default)")
    d.add_argument("--out", default="out/demo")
    d.set_defaults(func=_cmd_demo)

    b = sub.add_parser("bench", help="rate-distortion (and speed) of bundles against JPEG 2000, JPEG XL and JPEG-LS")
    b.add_argument("--model", dest="models", action="append", default=None, metavar="BUNDLE",
                   help="bundle directory; repeat to compare several (default: the shipped one)")
    b.add_argument("--dir", default=None, help="a folder of images instead of the test split")
    b.add_argument("--out", default="out/bench")
    b.add_argument("--only", default=None, metavar="S[,S]",
                   help="only these sections: rd, lossless, bounded, speed (default: all; speed needs --speed)")
    b.add_argument("--backend", choices=["auto", "edge", "keras"], default="auto",
                   help="our transforms: the bundle's TFLite graphs (edge), the Keras layers, or edge when present")
    b.add_argument("--speed", action="store_true",
                   help="also time encode/decode file to file (median of --runs) and peak memory, in fresh processes")
    b.add_argument("--runs", type=int, default=5, help="timed runs after a warm-up (>= 5)")
    b.add_argument("--threads", type=int, default=2, help="TFLite threads for our codec")
    b.add_argument("--speed-quality", type=int, default=None, help="our quality level in the speed report "
                   "(default: the edge default)")
    b.set_defaults(func=_cmd_bench)
    return p


def _needs_workstation(command: str, missing: str) -> str:
    return (f"keras-codec {command} needs {WORKSTATION}; this Python ({platform.python_version()}, "
            f"{sys.executable}) has no {missing}")


NEEDS_TENSORFLOW = ("train", "eval", "export")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        if args.from_bundle is _default_model_lazy:
            args.from_bundle = _default_model()
        args.seed_given = args.seed is not None
        args.seed = 0 if args.seed is None else args.seed
    if args.command in NEEDS_TENSORFLOW and importlib.util.find_spec("tensorflow") is None:
        print(f"keras-codec: error: {_needs_workstation(args.command, 'tensorflow')}", file=sys.stderr)
        return 2
    if getattr(args, "model", "x") is None:
        args.model = _default_model()
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"keras-codec: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        # e.g. `bench --backend keras` in the TensorFlow-free venv: one line, not a traceback
        if (exc.name or "").split(".")[0] not in TRAINING_STACK:
            raise
        print(f"keras-codec: error: {_needs_workstation(args.command, exc.name)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
