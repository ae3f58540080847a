"""The `skipvit` command line. Each subcommand imports its module lazily."""

from __future__ import annotations

import argparse
import json
import sys

from training.data import DATASETS


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, choices=DATASETS, help="dataset name")
    p.add_argument("--data-dir", default=None, help="directory holding the dataset's files")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of train carved out for validation")


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
    s.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    s.add_argument("--ckpt-dir", default=None, help="checkpoint directory (default runs/<out>-static)")
    s.add_argument("--resume", action="store_true", help="continue from the checkpoint in --ckpt-dir")
    s.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="stop after N epochs of this run, leaving a checkpoint for --resume")  # fmt: skip


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


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a bundle over HTTP")
    p.add_argument(
        "--bundle", default=None, help="bundle directory (default: SKIPVIT_BUNDLE or the shipped one)"
    )
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skipvit", description="Adaptive-depth ViT: train, search, evaluate, serve."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _evaluate_parser(sub)
    _serve_parser(sub)
    return parser


def cmd_evaluate(args) -> None:
    from training.evaluate_cli import evaluate_bundle

    result = evaluate_bundle(args.bundle, args.point, args.split, args.limit, args.data_dir,
                             args.batch_size, args.device)  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"point {result['point']} ({result['method']}) on {result['split']} "
              f"[{result['n']} images]: accuracy {100 * result['accuracy']:.2f}%, "
              f"mean layers {result['mean_layers']:.3f} of {result['depth']}")  # fmt: skip


def cmd_serve(args) -> None:
    from service.main import serve

    serve(bundle=args.bundle, host=args.host, port=args.port)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "train":
            from training import train_static

            {"static": train_static.run}[args.method](args)
        elif args.command == "evaluate":
            cmd_evaluate(args)
        elif args.command == "serve":
            cmd_serve(args)
    except (FileNotFoundError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"skipvit: error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
