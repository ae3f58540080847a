"""Flag groups that several commands take, each defined once here.

A command's ``add_arguments(parser)`` adds the groups it takes next to its own flags. Nothing here
imports torch: the groups are added while the command line is parsed, before a command runs.
"""

from __future__ import annotations

import argparse

DEVICE_HELP = "auto, cpu or cuda"


def add_device(p: argparse.ArgumentParser, default: str = "auto", help: str = DEVICE_HELP) -> None:
    p.add_argument("--device", default=default, help=help)


def add_seed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0)


def add_data(p: argparse.ArgumentParser) -> None:
    """The dataset a run trains on, and the train/val split it carves."""
    from skipvit.training.data import DATASETS  # imports torch: only the commands that train from --data

    p.add_argument("--data", required=True, choices=DATASETS, help="dataset name")
    add_data_dir(p)
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
        type=data_opt,
        metavar="KEY=VALUE",
        help="loader option, e.g. image_size=32 for folder (repeatable; kept in the bundle)",
    )


def add_data_dir(p: argparse.ArgumentParser, help: str = "directory holding the dataset's files") -> None:
    p.add_argument("--data-dir", default=None, help=help)


def add_bundle_data(p: argparse.ArgumentParser) -> None:
    """For a bundle made by ``skipvit import hf``, which records no dataset: where its labelled
    images come from (the class folders are its labels; size, normalisation and resampling are the
    bundle's). A bundle that records its dataset needs no ``--data``."""
    p.add_argument(
        "--data",
        default=None,
        choices=("folder",),
        help="an imported bundle's labelled images: folder (in --data-dir, one folder per label); "
        "default: the dataset the bundle records",
    )


def add_evaluation(p: argparse.ArgumentParser) -> None:
    """What a command that runs bundle points on a split takes: the split, how much of it, where the
    data is, the batch, the device, and JSON output."""
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--limit", type=int, default=None, help="only the first N images of the split")
    add_data_dir(p)
    add_bundle_data(p)
    p.add_argument("--batch-size", type=int, default=512)
    add_device(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def add_batch_size(p: argparse.ArgumentParser, default: int) -> None:
    """A training command's batch: the global one, whatever the number of processes."""
    p.add_argument(
        "--batch-size",
        type=int,
        default=default,
        help=f"images per optimiser step (default {default}); under torchrun the global batch, "
        "shared evenly by the processes",
    )


def add_limit_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")


def add_checkpointing(
    p: argparse.ArgumentParser, default_dir: str, unit: str = "epochs", state: str = "checkpoint"
) -> None:
    """Where a run saves its state after every ``unit`` (epoch, generation), ``--resume`` to
    continue it, ``--stop-after N`` to split a long run across sessions."""
    p.add_argument("--ckpt-dir", default=None, help=f"{state} directory (default {default_dir})")
    p.add_argument("--resume", action="store_true", help=f"continue from the {state} in --ckpt-dir")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="N",
        help=f"stop after N {unit} of this run, leaving a {state} for --resume",
    )


def add_reward(p: argparse.ArgumentParser, note: str = "") -> None:
    """The RL reward R = w_acc·A − w_layers·L + eps, discounted by gamma (thesis eqs. 3.6-3.10)."""
    p.add_argument("--gamma", type=float, default=0.99, help=f"{note}discount of the reward over the layers")
    p.add_argument("--eps", type=float, default=-1e-5, help=f"{note}reward offset (thesis: -1e-5)")
    p.add_argument("--w-acc", type=float, default=1.0, help=f"{note}reward weight of correctness A")
    p.add_argument("--w-layers", type=float, default=1.0, help=f"{note}reward weight of the layer fraction L")


def data_opt(text: str) -> tuple[str, int | float | str]:
    """``KEY=VALUE`` -> (key, value), the value an int or a float where it reads as one."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


def positive_ints(text: str) -> list[int]:
    """``1,8,32`` -> [1, 8, 32]: positive integers separated by commas."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def positive_floats(text: str) -> list[float]:
    """``1,2,3`` -> [1.0, 2.0, 3.0]: positive numbers separated by commas."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
    return values


def cpu_list(text: str) -> list[int]:
    """``0-7,12`` -> [0, 1, ..., 7, 12]: CPU numbers and ranges separated by commas (taskset's -c)."""
    cpus: set[int] = set()
    try:
        for part in (x.strip() for x in text.split(",")):
            if not part:
                continue
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi or lo)
            if first < 0 or last < first:
                raise ValueError(part)
            cpus.update(range(first, last + 1))
    except ValueError:
        cpus = set()
    if not cpus:
        raise argparse.ArgumentTypeError(f"expected CPU numbers or ranges such as 0-7,12, got {text!r}")
    return sorted(cpus)


def floats(text: str) -> list[float]:
    """``0.1,0.5`` -> [0.1, 0.5]."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")
    return values
