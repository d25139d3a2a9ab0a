"""The ``tada`` command. Thin: parses arguments and calls the library."""
from __future__ import annotations

import argparse
import os
import platform
import sys
from typing import List, Optional


def _env(_: argparse.Namespace) -> int:
    import torch

    import tada

    print(f"tada        {tada.__version__}")
    print(f"python      {platform.python_version()}")
    print(f"torch       {torch.__version__} (threads {torch.get_num_threads()})")
    print(f"cuda        {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available'}")
    print(f"platform    {platform.platform()}  {platform.processor() or platform.machine()}")
    from tada.nn import _native

    state = ("switched off (TADA_NATIVE=0)" if os.environ.get("TADA_NATIVE", "1") == "0"
             else "built" if _native.available() else "not available (no C++ compiler?)")
    print(f"native      T-Pool CPU kernels {state}")
    return 0


def _paper_rows(name: str, frames: Optional[int], size: Optional[int]):
    from tada.models.flops import PAPER

    rows = [r for r in PAPER if r.model == name]
    if frames is not None:
        rows = [r for r in rows if r.frames == frames]
    if size is not None:
        rows = [r for r in rows if r.size == size]
    return rows


def _flops(args: argparse.Namespace) -> int:
    import json

    from tada.models import is_model, list_models
    from tada.models.flops import PAPER, profile
    from tada.models.registry import _unknown

    jobs = []  # (name, frames, size, overrides, paper row or None)
    if not args.names:
        for r in PAPER:
            if (args.frames in (None, r.frames)) and (args.size in (None, r.size)):
                jobs.append((r.model, r.frames, r.size, dict(r.overrides), r))
    for pattern in args.names:
        names = list_models(pattern) if any(ch in pattern for ch in "*?[") else [pattern]
        if not names or not all(is_model(n) for n in names):
            print(f"tada flops: {_unknown(pattern).args[0]}", file=sys.stderr)
            return 2
        for name in names:
            rows = _paper_rows(name, args.frames, args.size)
            if rows:
                jobs += [(name, r.frames, r.size, dict(r.overrides), r) for r in rows]
            else:
                jobs.append((name, args.frames or 8, args.size or 224, {}, None))
    results = [profile(n, t, s, overrides=o, paper=r) for n, t, s, o, r in jobs]
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
        return 0

    def pct(v):
        return "" if v is None else f"{v:+.1f}%"

    header = f"{'model':<24} {'frames':>6} {'size':>5} {'params (M)':>10} {'paper':>7} {'diff':>7} {'GFLOPs':>8} {'paper':>7} {'diff':>7}  note"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.model:<24} {r.frames:>6} {r.size:>5} {r.params_m:>10.2f} {r.paper_params_m or '':>7} "
            f"{pct(r.params_diff):>7} {r.gflops:>8.2f} {r.paper_gflops or '':>7} {pct(r.gflops_diff):>7}  {r.note}"
        )
    print("GFLOPs per view, 1 multiply-add = 1 FLOP (fvcore convention); params include a 400-class head.")
    return 0


def _models(args: argparse.Namespace) -> int:
    from tada.models import list_models

    names = list_models(args.pattern)
    print("\n".join(names))
    return 0 if names else 1


def _synth(args: argparse.Namespace) -> int:
    import json
    import time

    from tada.data.synth import make_synthetic_dataset, resolve_classes

    try:
        classes = resolve_classes(args.classes)
    except ValueError as e:
        print(f"tada synth: {e}", file=sys.stderr)
        return 2
    args.fps_given = args.fps is not None
    args.per_class_given = args.per_class is not None
    args.per_class = 60 if args.per_class is None else args.per_class
    if args.untrimmed and args.compositional:
        print("tada synth: --untrimmed and --compositional are two different datasets; choose one", file=sys.stderr)
        return 2
    args.fps = 30 if args.fps is None else args.fps
    t0 = time.perf_counter()
    if args.untrimmed:
        from tada.data.synth_untrimmed import make_untrimmed_dataset

        paths = make_untrimmed_dataset(args.out, classes=classes, num_videos=args.videos,
                                       duration=tuple(args.duration), instances=tuple(args.instances),
                                       fps=args.fps if args.fps_given else 10, size=args.size, seed=args.seed,
                                       progress=not args.quiet)
        print(f"wrote {args.videos} untrimmed videos ({args.duration[0]:g}-{args.duration[1]:g} s, "
              f"{args.instances[0]}-{args.instances[1]} actions each) to {paths['root']} in "
              f"{time.perf_counter() - t0:.1f} s")
        for key, path in paths.items():
            if key != "root":
                print(f"  {key:<12} {path}")
        return 0
    if args.compositional:
        from tada.data.synth_compositional import make_compositional_dataset

        paths = make_compositional_dataset(args.out, per_class=args.per_class if args.per_class_given else 30,
                                           frames=args.frames, size=args.size, fps=args.fps, seed=args.seed,
                                           progress=not args.quiet)
        meta = json.loads(paths["meta"].read_text())
        print(f"wrote the compositional zero-shot dataset ({len(meta['seen'])} seen and {len(meta['heldout'])} "
              f"held-out classes, {len(meta['direction_only'])} of them differing from a seen class only by "
              f"direction) to {paths['root']} in {time.perf_counter() - t0:.1f} s")
        for key in ("train", "val", "test_seen", "test_heldout", "classes_seen", "classes_heldout", "meta"):
            print(f"  {key:<16} {paths[key]}")
        return 0
    paths = make_synthetic_dataset(args.out, classes=classes, per_class=args.per_class, frames=args.frames,
                                   size=args.size, seed=args.seed, fps=args.fps, progress=not args.quiet)
    n = len(classes) * args.per_class
    print(f"wrote {n} videos ({len(classes)} classes x {args.per_class}, {args.frames} frames of "
          f"{args.size}x{args.size} at {args.fps} fps) to {paths['root']} in {time.perf_counter() - t0:.1f} s")
    for key in ("train", "val", "test", "classes"):
        print(f"  {key:<8} {paths[key]}")
    return 0


def _data_inspect(args: argparse.Namespace) -> int:
    import json

    from tada.data.inspect import format_report, inspect_dataset

    try:
        report = inspect_dataset(args.list, root=args.root, format=args.format, backend=args.backend,
                                 workers=args.workers, progress=not args.quiet)
    except (ValueError, OSError) as e:
        print(f"tada data inspect: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 1 if report["num_bad"] else 0


def _setup_logging():
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _train(args: argparse.Namespace) -> int:
    from tada.engine.config import load_config
    from tada.engine.distributed import cleanup
    from tada.engine.trainer import Trainer, TrainingStopped

    _setup_logging()
    cfg = load_config(args.config, list(args.overrides) + (["train.resume=false"] if args.overwrite else []))
    try:
        trainer = Trainer(cfg, progress=not args.no_progress)
        try:
            out = trainer.fit()
        except TrainingStopped as e:
            print(str(e))
            return 130 if e.signal == "SIGINT" else 0
        unreadable = f"; {out['unreadable']} unreadable training videos were replaced" if out["unreadable"] else ""
        what = "top-1" if trainer.task.name in ("classification", "verb_noun") else "score"
        print(f"trained {out['steps']} steps in {out['time']:.0f} s; best val {what} {out['best_top1']:.4g}; "
              f"checkpoints in {out['output_dir']}{unreadable}")
        if cfg.data.test_list:
            return _evaluate(trainer, cfg)
        return 0
    finally:
        cleanup()


def _evaluate(trainer, cfg) -> int:
    ds, _ = type(trainer.task).build_dataset(cfg, "test")
    res = trainer.evaluate(ds)
    print(f"test: {trainer.task.summary(res)}")
    for k, v in trainer.write_report(res, "test").items():
        print(f"  {k:<14} {v}")
    return 0


def _test(args: argparse.Namespace) -> int:
    from tada.engine.config import load_config
    from tada.engine.distributed import cleanup
    from tada.engine.evaluate import test_checkpoint

    _setup_logging()
    cfg = load_config(args.config, list(args.overrides) + ["train.resume=false"])
    if not cfg.data.test_list:
        print("tada test: data.test_list is not set (give it in the config or as data.test_list=PATH)", file=sys.stderr)
        return 2
    try:
        task, res, files = test_checkpoint(cfg, args.checkpoint, ema=args.ema, progress=not args.no_progress)
    finally:
        cleanup()
    print(f"test: {task.summary(res)}")
    for k, v in files.items():
        print(f"  {k:<14} {v}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from tada.engine.checkpoint import load_checkpoint
    from tada.engine.predict import predict_videos

    import torch

    if str(args.device).startswith("cuda") and not torch.cuda.is_available():  # before any file is read
        raise ValueError(f"--device {args.device}: no CUDA device is available here; use --device cpu")
    labels = None
    if args.labels is not None or args.labels_file is not None:
        if args.labels is not None and args.labels_file is not None:
            raise ValueError("give --labels or --labels-file, not both")
        if args.labels_file is not None:
            from tada.data.classnames import read_class_names

            labels = read_class_names(args.labels_file)
        else:
            labels = [t.strip() for t in args.labels.split(",") if t.strip()]
        if not labels:
            raise ValueError("--labels / --labels-file gave no labels; e.g. --labels 'juggling,dancing'")
    task = ((load_checkpoint(args.checkpoint).get("config") or {}).get("task") or {}).get("name")
    if labels is not None or task == "video_text":  # free-text labels ranked by a video-text model
        from tada.engine.zeroshot import predict_labels

        if task != "video_text":
            raise ValueError(f"--labels ranks free text with a video-text checkpoint (task.name=video_text); "
                             f"{args.checkpoint} was trained with task {task or 'classification'!r}")
        results = predict_labels(args.videos, args.checkpoint, labels, topk=args.topk, device=args.device)
    else:
        results = predict_videos(args.videos, args.checkpoint, topk=args.topk, device=args.device)
    bad = 0
    for r in results:
        if "error" in r:
            bad += 1
            print(f"{r['video']}: cannot read: {r['error']}")
            continue
        print(r["video"])
        for name, p in r["top"]:
            print(f"  {p:7.2%}  {name}")
    return 1 if bad else 0


def _demo(args: argparse.Namespace) -> int:
    from tada.engine.demo import main as demo_main

    return demo_main(args.demo_args)


def build_parser() -> argparse.ArgumentParser:
    import tada

    parser = argparse.ArgumentParser(prog="tada", description="Temporally-adaptive video models.")
    parser.add_argument("--version", action="version", version=f"tada {tada.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    env = sub.add_parser("env", help="print versions of tada, torch and the machine it runs on")
    env.set_defaults(func=_env)
    models = sub.add_parser("models", help="list registered model names")
    models.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'tada*'")
    models.set_defaults(func=_models)
    flops = sub.add_parser(
        "flops", help="params and GFLOPs per view, beside the paper's figures",
        description="Params and GFLOPs per view (1 multiply-add = 1 FLOP), counted on the meta device, "
        "beside the paper's figure where it reports one. Without names: every model the paper reports.",
    )
    flops.add_argument("names", nargs="*", metavar="NAME", help="model names or patterns (default: the paper's table)")
    flops.add_argument("--frames", type=int, default=None, help="input frames (default: the paper's, else 8)")
    flops.add_argument("--size", type=int, default=None, help="input height = width (default: the paper's, else 224)")
    flops.add_argument("--json", action="store_true", help="print JSON instead of a table")
    flops.set_defaults(func=_flops)

    train = sub.add_parser("train", help="train (and test) a model from a YAML recipe",
                           description="Train from a YAML recipe with key.sub=value overrides, e.g. "
                           "`tada train configs/synth/tada2d_mini.yaml optim.lr=0.05`. Running the same command "
                           "again continues from train.output_dir/last.pt (refused, naming the keys, when its saved "
                           "config differs); --overwrite (= train.resume=false) starts over instead. SIGTERM or "
                           "Ctrl-C saves last.pt after the current step and stops. Multi-GPU / multi-node: torchrun.")
    train.add_argument("config")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--overwrite", action="store_true",
                       help="start over in a used train.output_dir, replacing its last.pt and logs (= train.resume=false)")
    train.set_defaults(func=_train)

    test = sub.add_parser("test", help="multi-view evaluation of a checkpoint on data.test_list")
    test.add_argument("config")
    test.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    test.add_argument("--checkpoint", required=True)
    test.add_argument("--ema", action="store_true", help="evaluate the checkpoint's EMA weights")
    test.add_argument("--no-progress", action="store_true")
    test.set_defaults(func=_test)

    predict = sub.add_parser("predict", help="top-k classes of video files from a checkpoint (or, for a video-text "
                             "checkpoint, free-text labels ranked)")
    predict.add_argument("videos", nargs="+", metavar="VIDEO")
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("--topk", type=int, default=5)
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--labels", default=None, metavar="A,B,C",
                         help="video-text checkpoints: rank these free-text labels (comma-separated)")
    predict.add_argument("--labels-file", default=None, metavar="FILE", help="video-text checkpoints: one label per line")
    predict.set_defaults(func=_predict)

    sub.add_parser("extract", add_help=False,
                   help="features of every video for temporal action localisation (see `tada extract --help`)")
    sub.add_parser("zeroshot", add_help=False,
                   help="zero-shot classification with a video-text checkpoint over dataset splits, mean ± std "
                   "(see `tada zeroshot --help`)")
    sub.add_parser("eval-detection", add_help=False,
                   help="ActivityNet-protocol detection mAP / proposal AR@AN of a results JSON "
                   "(see `tada eval-detection --help`)")
    sub.add_parser("explain", add_help=False,
                   help="the per-frame calibration alpha of each TAdaConv layer for a video and its time reversal: "
                   "heatmaps, magnitude across depth, JSON (see `tada explain --help`)")
    sub.add_parser("compare", add_help=False,
                   help="two finished runs: per-class gain, training curves, Markdown table "
                   "(see `tada compare --help`)")
    demo = sub.add_parser("demo", help="the default job: synthetic data, TSN vs TAda2D, comparison table",
                          add_help=False)
    demo.add_argument("demo_args", nargs=argparse.REMAINDER)
    demo.set_defaults(func=_demo)
    synth = sub.add_parser(
        "synth", help="write the synthetic temporal-reasoning dataset (time-reversal class pairs)",
        description="Write H.264 .mp4 videos of classes that come in time-reversal pairs (moving left/right, "
        "up/down, growing/shrinking, fading in/out, widening/narrowing; rotating cw/ccw on request) plus "
        "Kinetics-style train/val/test lists and classes.txt.",
    )
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--classes", nargs="+", default=None, metavar="N|NAME",
                       help="number of classes (taken pair by pair, at most 12) or class names (default: the 10 "
                       "of the five pairs without rotation)")
    synth.add_argument("--per-class", type=int, default=None, help="videos per class (default 60; 30 with "
                       "--compositional)")
    synth.add_argument("--frames", type=int, default=16, help="frames per video (default 16)")
    synth.add_argument("--size", type=int, default=64, help="frame height = width, even (default 64)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--fps", type=int, default=None, help="frame rate (default 30; 10 with --untrimmed)")
    synth.add_argument("--untrimmed", action="store_true",
                       help="long videos with 1-4 action instances on distracting backgrounds and ActivityNet-style "
                       "JSON ground truth (temporal action localisation)")
    synth.add_argument("--compositional", action="store_true",
                       help="classes named by words that combine ('a red square moving left'); seen and held-out "
                       "combinations for zero-shot evaluation")
    synth.add_argument("--videos", type=int, default=60, help="--untrimmed: number of videos (default 60)")
    synth.add_argument("--duration", type=float, nargs=2, default=[20.0, 40.0], metavar=("MIN", "MAX"),
                       help="--untrimmed: video length range in seconds (default 20 40)")
    synth.add_argument("--instances", type=int, nargs=2, default=[1, 4], metavar=("MIN", "MAX"),
                       help="--untrimmed: action instances per video (default 1 4)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_synth)
    data = sub.add_parser("data", help="dataset tools (inspect)")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    inspect = data_sub.add_parser(
        "inspect", help="decode every video of an annotation list and report counts, stats and bad files",
        description="Probe and decode every video an annotation list names; print counts, classes, "
        "duration/fps/resolution statistics and every unreadable file. Exit code 1 if any file is bad.",
    )
    inspect.add_argument("list", help="annotation file (or folder for the folder/hmdb51 formats)")
    inspect.add_argument("--root", default=None, help="video root folder (default: the list's folder)")
    inspect.add_argument("--format", default=None,
                         choices=["kinetics", "kinetics_csv", "ssv2", "ssv1", "epic", "ucf101", "hmdb51", "csv",
                                  "folder"], help="annotation format (default: detected)")
    inspect.add_argument("--backend", default=None, help="video decoding backend (default: pyav)")
    inspect.add_argument("--workers", type=int, default=1, help="decoding threads (default 1)")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.add_argument("--quiet", action="store_true", help="no progress bar")
    inspect.set_defaults(func=_data_inspect)
    data.set_defaults(func=lambda _args: (data.print_help(), 2)[1])
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:  # everything after `demo` is the demo's own (argparse.REMAINDER drops leading options)
        from tada.engine.demo import main as demo_main

        return demo_main(argv[1:])
    if argv[:1] == ["extract"]:  # its own parser: options and KEY=VALUE overrides in any order
        from tada.engine.extract import main as extract_main

        return extract_main(argv[1:])
    if argv[:1] == ["zeroshot"]:
        from tada.engine.zeroshot import main as zeroshot_main

        return zeroshot_main(argv[1:])
    if argv[:1] == ["eval-detection"]:
        from tada.engine.detection_eval import main as eval_main

        return eval_main(argv[1:])
    if argv[:1] == ["explain"]:
        from tada.engine.explain import main as explain_main

        return explain_main(argv[1:])
    if argv[:1] == ["compare"]:
        from tada.engine.compare import main as compare_main

        return compare_main(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides given after an option (e.g. after --checkpoint CKPT)
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from tada.engine.distributed import DistributedError

    try:
        return args.func(args)
    except (ValueError, OSError, FloatingPointError, DistributedError, KeyboardInterrupt) as e:
        # expected failures (bad input, full disk, NaN loss, a lost rank, Ctrl-C twice): one line, no traceback
        if os.environ.get("TADA_DEBUG"):
            raise
        msg = "interrupted" if isinstance(e, KeyboardInterrupt) else " ".join(str(e).split())
        print(f"tada {args.command}: error: {msg}" + ("" if isinstance(e, KeyboardInterrupt) else
                                                       " (TADA_DEBUG=1 shows the traceback)"), file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else (3 if isinstance(e, FloatingPointError) else 2)


if __name__ == "__main__":
    sys.exit(main())
