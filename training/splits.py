"""Which train/val split a run uses, and what a bundle records of it.

A bundle's searches select on its validation split, so weights written into it must never have
trained on those images: a run that starts from or writes into an existing bundle keeps the split
that bundle recorded (``dataset.split``); a fresh one carves ``--val-fraction`` with ``--seed``.
"""

from __future__ import annotations

from skipvit.model.bundle import Bundle
from skipvit.training.data import BUNDLE_DATA, IMPORTED, DataSplits

DEFAULT_VAL_FRACTION = 0.1


def same_dataset(dataset: dict, args) -> bool:
    """Whether a bundle's ``dataset`` entry is the dataset this run loads (name and options). An
    imported bundle (no dataset of its own) reads an image folder (``--data folder``) as the model
    takes it, with no ``--data-opt``: the options are the bundle's."""
    if dataset.get("name") == IMPORTED:
        return args.data in BUNDLE_DATA and not args.data_opt
    return dataset.get("name") == args.data and dataset.get("options", {}) == dict(args.data_opt)


def recorded_split(bundle: Bundle) -> dict:
    """The train/val split ``bundle`` was made with (bundles from before it was recorded: the default)."""
    return {"val_fraction": DEFAULT_VAL_FRACTION, "seed": 0} | bundle.dataset.get("split", {})


def run_split(args, bundle: Bundle | None) -> dict:
    """The run's train/val split: the one ``bundle`` recorded, when the run starts from or writes into
    an existing bundle (its searches select on that validation split, so the weights must not train on
    it), else ``--val-fraction`` (default 0.1) and ``--seed``. ``--seed`` also seeds the training, so
    only an explicit ``--val-fraction`` can conflict with a recorded split."""
    if bundle is None:
        fraction = DEFAULT_VAL_FRACTION if args.val_fraction is None else args.val_fraction
        return {"val_fraction": fraction, "seed": args.seed}
    split = recorded_split(bundle)
    if args.val_fraction is not None and args.val_fraction != split["val_fraction"]:
        raise ValueError(
            f"--val-fraction {args.val_fraction} conflicts with the split recorded in {bundle.root} "
            f"(val_fraction {split['val_fraction']}, seed {split['seed']}), which this run keeps so that "
            "the bundle's validation images stay out of training; Hint: drop --val-fraction, or pick "
            "another --out (and no --init-from) for a new split"
        )
    return split


def check_same_split(src: Bundle, target: Bundle) -> None:
    """Refuse weights trained on another split of the same data than the bundle written into: some
    of the target's validation images, on which its searches select, would be their training images."""
    a, b = recorded_split(src), recorded_split(target)
    if a != b:
        raise ValueError(
            f"{src.root} was trained on another split of this dataset (val_fraction {a['val_fraction']}, "
            f"seed {a['seed']}) than {target.root} records (val_fraction {b['val_fraction']}, seed {b['seed']}): "
            f"its weights have seen some of {target.root}'s validation images; Hint: --init-from a bundle "
            "made with that split (e.g. the --out bundle itself), or pick another --out"
        )


def dataset_meta(splits: DataSplits, split: dict, args, imported: Bundle | None = None) -> dict:
    """The bundle's dataset entry: enough to rebuild the same splits later (evaluate, search). For
    weights that started from an ``imported`` bundle, that bundle's entry (its labels, size and
    normalisation are the model's) with the split."""
    if imported is not None:
        return imported.dataset | {"split": split}
    return splits.info.to_dict() | {"split": split, "options": dict(args.data_opt)}
