"""The `skipvit` command line. Each subcommand imports its module lazily."""

from __future__ import annotations

import argparse
import json
import re
import sys

from skipvit.training.data import DATASETS


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, choices=DATASETS, help="dataset name")
    p.add_argument("--data-dir", default=None, help="directory holding the dataset's files")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="share of train carved out for validation (default 0.1; a run that starts from or "
        "writes into an existing bundle keeps the split that bundle recorded)",
    )
    p.add_argument(
        "--data-opt",
        action="append",
        default=[],
        type=_data_opt,
        metavar="KEY=VALUE",
        help="loader option, e.g. image_size=32 for folder (repeatable; kept in the bundle)",
    )


def _data_opt(text: str) -> tuple[str, int | float | str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model and write a bundle")
    tsub = p.add_subparsers(dest="method", required=True)
    s = tsub.add_parser("static", help="plain ViT, cross-entropy")
    _add_data_args(s)
    s.add_argument("--out", required=True, help="bundle directory to write")
    s.add_argument("--epochs", type=int, default=15)
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    s.add_argument("--preset", default="fmnist-9", help="architecture preset (model.vit.PRESETS)")
    s.add_argument("--depth", type=int, default=None)
    s.add_argument("--dim", type=int, default=None)
    s.add_argument("--heads", type=int, default=None)
    s.add_argument("--patch-size", type=int, default=None)
    s.add_argument("--shared-layers", action="store_true", help="UViT: one block shared by every layer")
    s.add_argument("--no-augment", action="store_true")
    s.add_argument("--erase-prob", type=float, default=0.25, help="random-erasing probability")
    s.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    s.add_argument("--ckpt-dir", default=None, help="checkpoint directory (default runs/<out>-static)")
    s.add_argument("--resume", action="store_true", help="continue from the checkpoint in --ckpt-dir")
    s.add_argument(
        "--init-from", default=None, help="start from this bundle's static weights (a second stage)"
    )
    s.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="N",
        help="stop after N epochs of this run, leaving a checkpoint for --resume",
    )
    _rl_parser(tsub)
    _exits_parser(tsub)


def _add_reward_args(p: argparse.ArgumentParser, note: str = "") -> None:
    """The RL reward R = w_acc·A − w_layers·L + eps, discounted by gamma (thesis eqs. 3.6-3.10)."""
    p.add_argument("--gamma", type=float, default=0.99, help=f"{note}discount of the reward over the layers")
    p.add_argument("--eps", type=float, default=-1e-5, help=f"{note}reward offset (thesis: -1e-5)")
    p.add_argument("--w-acc", type=float, default=1.0, help=f"{note}reward weight of correctness A")
    p.add_argument("--w-layers", type=float, default=1.0, help=f"{note}reward weight of the layer fraction L")


def _rl_parser(tsub) -> None:
    r = tsub.add_parser("rl", help="RL layer-skipping gates, jointly with the backbone (thesis 3.4)")
    _add_data_args(r)
    r.add_argument(
        "--out", required=True, help="bundle to write into (an existing bundle gains the weight set)"
    )
    r.add_argument("--init-from", default=None, help="start from this bundle's weights (default: scratch)")
    r.add_argument("--init-weights", default=None, help="weight set of --init-from (default: static)")
    r.add_argument("--freeze-backbone", action="store_true", help="train only the head and the gates")
    r.add_argument("--name", default="rl", help="weight-set and point id to write")
    r.add_argument("--epochs", type=int, default=6)
    r.add_argument("--batch-size", type=int, default=128)
    r.add_argument("--lr", type=float, default=2e-4, help="backbone and head learning rate")
    r.add_argument("--agent-lr", type=float, default=1e-3, help="gate learning rate")
    r.add_argument("--baseline-lr", type=float, default=1e-3, help="baseline learning rate")
    _add_reward_args(r)
    r.add_argument("--rl-weight", type=float, default=1.0, help="weight of the policy loss next to CE")
    r.add_argument("--baseline-hidden", type=int, default=64, help="baseline MLP width")
    r.add_argument("--gate-init-bias", type=float, default=2.0, help="initial gate bias (p = sigmoid(bias))")
    r.add_argument("--preset", default="fmnist-9", help="architecture preset when training from scratch")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="auto")
    r.add_argument("--limit-train", type=int, default=None)
    r.add_argument("--ckpt-dir", default=None, help="checkpoint directory (default runs/<out>-<name>)")
    r.add_argument("--resume", action="store_true")
    r.add_argument("--stop-after", type=int, default=None, metavar="N")


def _exits_parser(tsub) -> None:
    e = tsub.add_parser("exits", help="DyCE exit heads on a bundle's frozen backbone (seed 003)")
    e.add_argument("--bundle", required=True, help="bundle to read the backbone from and write into")
    e.add_argument("--weights", default="static", help="the backbone's weight set (default: static)")
    e.add_argument("--name", default="dyce", help="weight set to write: the backbone plus the exits")
    e.add_argument("--types", default="linear,mlp-s,mlp-m", help="exit types (model.exits.EXIT_TYPES)")
    e.add_argument("--positions", default=None, help="exits after these layers, e.g. 3,5,7 (default: all)")
    e.add_argument("--epochs", type=int, default=30)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--lr", type=float, default=2e-3)
    e.add_argument("--weight-decay", type=float, default=0.01)
    e.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of the soft targets")
    e.add_argument("--hard-weight", type=float, default=0.0, help="share of CE on the labels in the loss")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    e.add_argument("--ckpt-dir", default=None, help="checkpoint dir (default runs/<bundle>-<name>-exits)")
    e.add_argument("--resume", action="store_true", help="continue from the checkpoint in --ckpt-dir")
    e.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="N",
        help="stop after N epochs of this run, leaving a checkpoint for --resume",
    )


def _dyce_parser(ssub) -> None:
    d = ssub.add_parser("dyce", help="DyCE: a lambda sweep picks exits and thresholds (seed 003)")
    d.add_argument("--bundle", required=True, help="bundle to search and write into")
    d.add_argument("--weights", default="dyce", help="weight set with exit heads (default: dyce)")
    d.add_argument("--name", default="dyce", help="point prefix (points <name>-1, <name>-2, ...)")
    d.add_argument("--lambdas", type=int, default=41, help="lambda values in the sweep")
    d.add_argument("--lambda-min", type=float, default=0.3, help="smallest lambda (weight of accuracy)")
    d.add_argument("--lambda-max", type=float, default=0.9995, help="largest lambda")
    d.add_argument("--thresholds", type=int, default=40, help="thresholds per exit (confidence quantiles)")
    d.add_argument("--max-rounds", type=int, default=100, help="circular search: most changes applied")
    d.add_argument("--max-points", type=int, default=16, help="most points written")
    d.add_argument("--batch-size", type=int, default=512)
    d.add_argument("--device", default="auto")
    d.add_argument("--data-dir", default=None)


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy and mean layers of a bundle point")
    p.add_argument("--bundle", required=True)
    p.add_argument("--point", default=None, help="point id (default: the bundle's default point)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images of the split")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON")


def _analyze_parser(sub) -> None:
    p = sub.add_parser("analyze", help="path distribution, processing ratio, unnecessary activations")
    p.add_argument("--bundle", required=True)
    p.add_argument("--point", default=None, help="point id (default: the bundle's default point)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None, help="analyse only the first N test images")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="output directory (default runs/analysis/<bundle>/<point>)")
    p.add_argument(
        "--into-report",
        action="store_true",
        help="also put the tables in the bundle's REPORT.md (and refresh its manifest)",
    )


def _search_parser(sub) -> None:
    p = sub.add_parser("search", help="post-training searches that add points to a bundle's front")
    ssub = p.add_subparsers(dest="method", required=True)
    n = ssub.add_parser("nsga", help="NSGA-II over per-layer gate genes, plain or --joint (thesis 3.5, 4.3)")
    n.add_argument("--bundle", required=True, help="bundle to search and write into")
    n.add_argument(
        "--joint",
        action="store_true",
        help="joint RL-NSGA: reward objective, weights fine-tuned between generations",
    )
    n.add_argument("--weights", default=None, help="weight set with gates to start from (default: rl)")
    n.add_argument("--name", default=None, help="point prefix (default nsga, or nsga-joint with --joint)")
    n.add_argument("--generations", type=int, default=30)
    n.add_argument("--population", type=int, default=25)
    n.add_argument("--mutation", type=float, default=0.65, help="probability that an offspring mutates")
    n.add_argument("--crossover", type=float, default=0.5, help="probability of one-point crossover")
    n.add_argument("--step", type=float, default=0.25, help="gene step: genes are -1 and 0..1 by this")
    n.add_argument("--val-batch", type=int, default=1024, help="validation images scored per generation")
    n.add_argument(
        "--steps-per-generation", type=int, default=20, help="joint: weight updates per generation"
    )
    n.add_argument("--batch-size", type=int, default=128, help="joint: training batch size")
    n.add_argument("--lr", type=float, default=1e-4, help="joint: backbone and head learning rate")
    n.add_argument("--agent-lr", type=float, default=1e-3, help="joint: gate and baseline learning rate")
    _add_reward_args(n, "joint: ")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--device", default="auto")
    n.add_argument("--data-dir", default=None)
    n.add_argument(
        "--ckpt-dir", default=None, help="search state directory (default runs/<bundle>-<name>-search)"
    )
    n.add_argument("--resume", action="store_true", help="continue the search saved in --ckpt-dir")
    n.add_argument("--stop-after", type=int, default=None, metavar="N", help="stop after N generations")
    _dyce_parser(ssub)
    _lac_parser(ssub)


def _lac_parser(ssub) -> None:
    c = ssub.add_parser("lac", help="LAC: halt when the hidden state's L2 norm stops growing (seed 002)")
    c.add_argument("--bundle", required=True, help="bundle to evaluate and write into")
    c.add_argument("--weights", default="static", help="comma-separated weight sets (default: static)")
    c.add_argument("--alphas", default="0.05,0.1,0.2,0.3,0.4,0.6,0.8,1.0", help="comma-separated alphas")
    c.add_argument("--modes", default="both", choices=["both", "per-example", "per-batch"])
    c.add_argument("--batch-size", type=int, default=512, help="per-example: images per forward")
    c.add_argument(
        "--report-batch",
        type=int,
        default=128,
        help="per-batch: also report at this many images per forward (0: skip)",
    )
    c.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    c.add_argument("--device", default="auto")
    c.add_argument("--data-dir", default=None)


def _parity_parser(sub) -> None:
    p = sub.add_parser("parity", help="seed 002 Table 1: parity with a GRU cell, with and without LAC")
    p.add_argument("--mode", default="all", choices=["all", "none", "per-batch", "per-example"])
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=10, help="T, the most GRU steps")
    p.add_argument("--length", type=int, default=16, help="sequence length")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-steps", type=int, default=20_000, help="optimiser steps per mode")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (cosine decay to 1%%)")
    p.add_argument("--test-size", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/parity/parity.json", help="results JSON (the table is printed)")


def _serve_parser(sub) -> None:
    from skipvit.service import main as serve_cmd

    serve_cmd.add_arguments(sub.add_parser("serve", help="serve a bundle over HTTP"))


def _concurrency_list(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return levels


def _bench_parser(sub) -> None:
    """`skipvit bench NAME`: each benchmark is benchmarks/bench_<NAME>.py with a ``run(args)``."""
    p = sub.add_parser("bench", help="benchmarks (loopback and in-process only)")
    bsub = p.add_subparsers(dest="benchmark", required=True)
    s = bsub.add_parser("server", help="batched server vs a naive endpoint vs the model in-process")
    s.add_argument("--bundle", default="checkpoints/fashion-mnist", help="bundle to serve and time")
    s.add_argument("--point", default=None, help="point id (default: the bundle's default point)")
    s.add_argument(
        "--url",
        default=None,
        help="measure this already running server instead of starting one (loopback only)",
    )
    s.add_argument(
        "--concurrency",
        type=_concurrency_list,
        default=[1, 8, 32, 64],
        metavar="C1,C2,...",
        help="closed-loop clients per level (default 1,8,32,64)",
    )
    s.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="runs of the reference level (64 clients), each with an in-process timing; the verdict "
        "reads the median round",
    )
    s.add_argument("--images-per-request", type=int, default=1)
    s.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    s.add_argument("--requests", type=int, default=None, help="measured requests per level (not --duration)")
    s.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each level")
    s.add_argument("--request-timeout", type=float, default=30.0, help="seconds until a request fails")
    s.add_argument("--timeout", type=float, default=900.0, help="bound on the whole load phase, in seconds")
    s.add_argument("--start-timeout", type=float, default=120.0, help="seconds a server may take to be ready")
    s.add_argument("--max-batch-size", type=int, default=None, help="SKIPVIT_MAX_BATCH_SIZE for the server")
    s.add_argument("--max-wait-ms", type=float, default=None, help="SKIPVIT_MAX_WAIT_MS for the server")
    s.add_argument(
        "--inproc-seconds",
        type=float,
        default=None,
        help="seconds per in-process timing (default: --duration, as long as a level's window)",
    )
    s.add_argument("--device", default="cpu", help="cpu, cuda or auto (servers and in-process alike)")
    s.add_argument("--data-dir", default=None, help="Fashion-MNIST directory (test images to send)")
    s.add_argument("--out-json", default="runs/bench/server.json")
    s.add_argument("--out-md", default=None, help="also write the markdown table here")
    m = bsub.add_parser(
        "model", help="static vs. points in-process: images/s, speedup vs. ideal, gates-on overhead, memory"
    )
    m.add_argument("--bundle", default="checkpoints/fashion-mnist", help="bundle to time")
    m.add_argument(
        "--points",
        default="auto",
        help="comma-separated point ids, 'all', or 'auto' (default: rl and the leanest nsga point "
        "within 5 accuracy points of static)",
    )
    m.add_argument(
        "--batch-sizes",
        type=_concurrency_list,
        default=[1, 8, 64, 256, 1024],
        metavar="B1,B2,...",
        help="batch sizes (default 1,8,64,256,1024)",
    )
    m.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    m.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    m.add_argument("--rounds", type=int, default=7, help="rounds over all configurations (median reported)")
    m.add_argument("--min-seconds", type=float, default=0.25, help="timed seconds per measurement")
    m.add_argument("--repeats", type=int, default=1, help="at least this many calls per measurement")
    m.add_argument("--limit", type=int, default=1024, help="first N test images used")
    m.add_argument("--data-dir", default=None, help="dataset directory (default: the dataset's own)")
    m.add_argument("--out-json", default="runs/bench/model.json")
    m.add_argument("--out-md", default=None, help="also write the markdown table here")
    m.add_argument("--out-png", default=None, help="the plot (default: next to the JSON, .png)")
    from skipvit.benchmarks.bench_kernel import add_arguments as kernel_arguments

    k = bsub.add_parser(
        "kernel", help="row compaction: Triton vs torch boolean indexing (GPU); syncs per forward"
    )
    kernel_arguments(k)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skipvit", description="Adaptive-depth ViT: train, search, evaluate, serve."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _evaluate_parser(sub)
    _analyze_parser(sub)
    _search_parser(sub)
    _parity_parser(sub)
    _serve_parser(sub)
    _bench_parser(sub)
    return parser


def cmd_evaluate(args) -> None:
    from skipvit.training.evaluate_cli import evaluate_bundle

    result = evaluate_bundle(
        args.bundle, args.point, args.split, args.limit, args.data_dir, args.batch_size, args.device
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"point {result['point']} ({result['method']}) on {result['split']} "
            f"[{result['n']} images]: accuracy {100 * result['accuracy']:.2f}%, "
            f"mean layers {result['mean_layers']:.3f} of {result['depth']}"
        )


def cmd_analyze(args) -> None:
    from skipvit.training.analyze import analyze_bundle, render_markdown

    result = analyze_bundle(
        args.bundle, args.point, args.data_dir, args.limit, args.batch_size, args.device, args.out
    )
    markdown = render_markdown(result)
    print(markdown)
    print(f"written to {result['out_dir']}")
    if args.into_report:
        from pathlib import Path

        from skipvit.model.bundle import write_manifest
        from skipvit.training.report import command_line, update_section

        root = Path(args.bundle)
        nested = re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + 2) + " ", markdown, flags=re.M)
        update_section(
            root, f"analysis: {result['point']}", f"Command: `{command_line(args.argv)}`\n\n{nested}"
        )
        write_manifest(root)


def cmd_serve(args) -> None:
    from skipvit.service.main import run

    run(args)


def cmd_bench(args) -> None:
    import importlib

    importlib.import_module(f"skipvit.benchmarks.bench_{args.benchmark}").run(args)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "train":
            from skipvit.training import train_exits, train_rl, train_static

            {"static": train_static.run, "rl": train_rl.run, "exits": train_exits.run}[args.method](args)
        elif args.command == "search":
            from skipvit.training import search_dyce, search_lac, search_nsga

            {"nsga": search_nsga.run, "dyce": search_dyce.run, "lac": search_lac.run}[args.method](args)
        elif args.command == "parity":
            from skipvit.training import parity

            parity.run(args)
        elif args.command == "evaluate":
            cmd_evaluate(args)
        elif args.command == "analyze":
            cmd_analyze(args)
        elif args.command == "serve":
            cmd_serve(args)
        elif args.command == "bench":
            cmd_bench(args)
    except (FileNotFoundError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"skipvit: error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
