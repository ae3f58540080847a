"""The `skipvit` command line: a table of commands, and the wiring from it to argparse.

Each command is a module with ``add_arguments(parser)`` and ``run(args)``. Only the modules of the
command named on the command line are imported (``skipvit --help`` imports none of them), so the
table's help texts are the ones the group listings show.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

# (command path, module, help)
COMMANDS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("train", "static"), "skipvit.training.train.static", "plain ViT, cross-entropy"),
    (
        ("train", "rl"),
        "skipvit.training.train.rl",
        "RL layer-skipping gates, jointly with the backbone (thesis 3.4)",
    ),
    (
        ("train", "exits"),
        "skipvit.training.train.exits",
        "DyCE exit heads on a bundle's frozen backbone (Dynamically Configurable Exiting)",
    ),
    (("evaluate",), "skipvit.training.evaluate_bundle", "accuracy and mean layers of a bundle point"),
    (("compare",), "skipvit.training.compare", "two points on the same images: paired difference, McNemar"),
    (
        ("analyze",),
        "skipvit.training.analyze",
        "path distribution, processing ratio, unnecessary activations",
    ),
    (
        ("search", "nsga"),
        "skipvit.training.search.nsga",
        "NSGA-II over per-layer gate genes, plain or --joint (thesis 3.5, 4.3)",
    ),
    (
        ("search", "dyce"),
        "skipvit.training.search.dyce",
        "DyCE (Dynamically Configurable Exiting): a lambda sweep picks exits and thresholds",
    ),
    (
        ("search", "lac"),
        "skipvit.training.search.lac",
        "LAC (L2 Norm Guided Adaptive Computation): halt when the hidden state's L2 norm stops growing",
    ),
    (
        ("parity",),
        "skipvit.training.parity",
        "parity with a GRU cell, with and without LAC (L2 Norm Guided Adaptive Computation, Table 1)",
    ),
    (
        ("import", "hf"),
        "skipvit.training.hf.import_hf",
        "a Hugging Face ViT / DeiT classifier (save_pretrained directory) as a bundle",
    ),
    (
        ("export", "hf"),
        "skipvit.training.hf.export_hf",
        "a bundle's static point as a Hugging Face ViT / DeiT classifier (save_pretrained directory)",
    ),
    (("serve",), "skipvit.service.main", "serve a bundle over HTTP"),
    (
        ("fleet",),
        "skipvit.service.fleetctl",
        "every replica of a fleet at once: set the point, knobs and autopilot; show where each stands",
    ),
    (
        ("bench", "server"),
        "skipvit.benchmarks.bench_server",
        "batched server vs a naive endpoint vs the model in-process",
    ),
    (
        ("bench", "model"),
        "skipvit.benchmarks.bench_model",
        "static vs. points in-process: images/s, speedup vs. ideal, gates-on overhead, memory",
    ),
    (
        ("bench", "overload"),
        "skipvit.benchmarks.bench_overload",
        "open-loop load at 1x-6x the measured capacity: goodput, latency of 200s and 503s, sent vs answered",
    ),
    (
        ("bench", "big-images"),
        "skipvit.benchmarks.bench_big_images",
        "normal clients beside clients sending maximum-size images: their throughput, server RSS",
    ),
    (
        ("bench", "autopilot"),
        "skipvit.benchmarks.bench_autopilot",
        "the SLO autopilot under a step load, off and on: p95, goodput, accuracy and the point chosen, per second",
    ),
    (
        ("bench", "kernel"),
        "skipvit.benchmarks.bench_kernel",
        "row compaction: Triton vs torch boolean indexing (GPU); syncs per forward",
    ),
)

# A command group: (help, the attribute that holds its sub-command)
GROUPS: dict[str, tuple[str, str]] = {
    "train": ("train a model and write a bundle", "method"),
    "search": ("post-training searches that add points to a bundle's front", "method"),
    "bench": ("benchmarks (loopback and in-process only)", "benchmark"),
    "import": ("bring in a model trained elsewhere, as a bundle", "format"),
    "export": ("write a bundle's model in another library's format", "format"),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; given ``argv``, only the commands it names get their arguments
    (and have their modules imported)."""
    named = _leading_words(argv) if argv is not None else None
    parser = argparse.ArgumentParser(
        prog="skipvit", description="Adaptive-depth ViT: train, search, evaluate, serve."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, Any] = {}  # group name -> its sub-parsers
    for path, module, help in COMMANDS:
        parent = sub
        if len(path) == 2:
            if path[0] not in groups:
                group_help, dest = GROUPS[path[0]]
                group = sub.add_parser(path[0], help=group_help)
                groups[path[0]] = group.add_subparsers(dest=dest, required=True)
            parent = groups[path[0]]
        p = parent.add_parser(path[-1], help=help)
        p.set_defaults(command_module=module)
        if named is None or named[: len(path)] == path:
            importlib.import_module(module).add_arguments(p)
    return parser


def _leading_words(argv: Sequence[str]) -> tuple[str, ...]:
    """The words before the first flag: the command path, e.g. ("train", "static")."""
    words = []
    for a in argv:
        if a.startswith("-"):
            break
        words.append(a)
    return tuple(words)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    args.argv = argv
    try:
        importlib.import_module(args.command_module).run(args)
    except (FileNotFoundError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"skipvit: error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None
