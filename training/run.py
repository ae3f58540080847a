"""The run scaffold shared by the training commands and the joint NSGA search.

- ``RunContext``: what a run starts from (its flags, seed and device, where its state is saved) and
  the splits it reads;
- ``Progress``: counted steps (epochs, generations) that start where a resumed run stopped, end at
  ``--stop-after``, and keep the wall time and one record per step;
- ``EpochRunner``: epochs on top of ``Progress`` that save model, optimiser and RNG state after
  every epoch (``checkpoint.py``) and refuse to ``--resume`` a checkpoint of other settings;
- ``train_batches``: one epoch of shuffled, augmented training batches on the device.

Under torchrun (``distributed``) the context carries the process's place in the run: every rank
reads the checkpoint, rank 0 alone writes it, and each rank takes its share of every batch.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from skipvit.training.checkpoint import (
    CKPT_META,
    check_settings,
    has_checkpoint,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from skipvit.training.data import DataSplits, bundle_input, load_bundle_splits, load_dataset
from skipvit.training.data.augment import AugmentConfig, augment, to_float
from skipvit.training.data.base import ArrayData, DatasetInfo
from skipvit.training.device import resolve_device
from skipvit.training.distributed import SINGLE, Dist, current


@dataclass(frozen=True)
class RunContext:
    """A run's flags, seed and device, the directory its state is saved in (``--ckpt-dir``, else
    ``runs/<default>``) and its place among torchrun's processes (``dist``). ``start`` seeds torch's
    global RNG, so every run that builds its model after it starts from the same initial weights
    (on every rank)."""

    args: argparse.Namespace
    seed: int
    device: torch.device
    ckpt_dir: Path
    dist: Dist = SINGLE

    @classmethod
    def start(cls, args: argparse.Namespace, default_dir: str) -> RunContext:
        device = resolve_device(args.device)
        torch.manual_seed(args.seed)
        ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir else Path("runs") / default_dir
        return cls(args, args.seed, device, ckpt_dir, current())

    def dataset_splits(self, split: dict, imported=None) -> DataSplits:
        """``--data`` split as ``split`` says (``splits.run_split``), train cut to ``--limit-train``;
        read as the ``imported`` bundle's model takes it, where the run starts from or writes into
        one (``data.load_bundle_splits``)."""
        args = self.args
        if imported is not None:
            splits = load_bundle_splits(
                imported.dataset, args.data_dir, data=args.data, split=split, **bundle_input(imported)
            )
        else:
            splits = load_dataset(args.data, args.data_dir, **split, **dict(args.data_opt))
        if args.limit_train:
            splits.train = splits.train.head(args.limit_train)
        return splits

    def bundle_splits(self, bundle) -> DataSplits:
        """The splits a bundle records (its ``dataset`` entry), read from ``--data-dir``; for an
        imported bundle, the dataset ``--data`` names, read as the model takes it."""
        data = getattr(self.args, "data", None)
        return load_bundle_splits(bundle.dataset, self.args.data_dir, data=data, **bundle_input(bundle))

    def epochs(self, model: nn.Module, opt: torch.optim.Optimizer, epochs: int, config: dict) -> EpochRunner:
        return EpochRunner(self, model, opt, epochs, config)


class Progress:
    """Steps ``start .. total`` of a run (``unit``: "epoch", "generation"), this session ending after
    ``stop_after`` of them; ``where`` says where the saved state lies, for the message that tells how
    to continue. Iterating yields the step indexes; ``record`` closes a step."""

    def __init__(self, total: int, stop_after: int | None, unit: str, where: str) -> None:
        self.total, self.stop_after, self.unit, self.where = total, stop_after, unit, where
        self.start, self.done, self.elapsed, self.history = 0, 0, 0.0, []
        self._t0 = 0.0

    def resume(self, start: int, elapsed: float, history: list[dict]) -> None:
        """Continue a run whose first ``start`` steps took ``elapsed`` seconds and left ``history``."""
        self.start, self.done, self.elapsed, self.history = start, start, elapsed, history

    def state(self) -> dict:
        """What a saved run records of its steps, for ``restore``: the steps done (under the key
        ``unit``), their wall time and their records."""
        return {self.unit: self.done, "elapsed_s": self.elapsed, "history": self.history}

    def restore(self, state: dict) -> None:
        """Continue from a run's ``state()``."""
        self.resume(state[self.unit], state["elapsed_s"], state["history"])

    @property
    def end(self) -> int:
        """The step this session stops at."""
        return self.total if self.stop_after is None else min(self.total, self.start + self.stop_after)

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start, self.end):
            self._t0 = time.time()
            yield step

    def record(self, record: dict) -> dict:
        """Add the step's wall time to the total and keep ``record`` (with ``elapsed_s``)."""
        self.done += 1
        self.elapsed += time.time() - self._t0
        self.history.append({**record, "elapsed_s": round(self.elapsed, 1)})
        return self.history[-1]

    def finished(self, log: Callable[[str], None] = print) -> bool:
        """Whether the run reached its last step; if not, say how to continue it."""
        if self.end < self.total:
            log(f"stopped after {self.unit} {self.end}/{self.total}; continue with --resume ({self.where})")
            return False
        return True


class EpochRunner:
    """Checkpointed epochs: start fresh or ``--resume``, save a checkpoint after every epoch,
    ``--stop-after N`` to split a long run across sessions.

    ``config``: the settings that determine the result (data and split, seed, epochs, learning
    rates, the starting weights, the method's own settings), JSON-like. It is saved with every
    checkpoint, and ``--resume`` refuses a checkpoint written under other settings: continuing it
    would give neither run's result, and a checkpoint already past ``--epochs`` would write a
    bundle whose report claims settings it never trained with."""

    def __init__(
        self, ctx: RunContext, model: nn.Module, opt: torch.optim.Optimizer, epochs: int, config: dict
    ) -> None:
        self.ckpt_dir, self.model, self.opt = ctx.ckpt_dir, model, opt
        self.dist, self.seed = ctx.dist, ctx.seed
        self.config = json.loads(json.dumps(config))
        self.g = torch.Generator().manual_seed(ctx.seed)  # shuffling (in one process, augmentation too)
        self.step = 0  # optimiser steps so far
        self.progress = Progress(epochs, ctx.args.stop_after, "epoch", f"checkpoint in {ctx.ckpt_dir}")
        if ctx.args.resume:
            check_settings(ctx.ckpt_dir / CKPT_META, read_meta(ctx.ckpt_dir).get("config"), self.config)
            meta = load_checkpoint(ctx.ckpt_dir, model, opt)
            self.progress.restore(meta)
            self.step = meta["step"]
            self.g.set_state(torch.tensor(meta["generator_state"], dtype=torch.uint8))
            print(f"resumed from {ctx.ckpt_dir} at epoch {self.progress.start}")
        elif has_checkpoint(ctx.ckpt_dir):
            print(
                f"note: {ctx.ckpt_dir} holds an older checkpoint; it will be overwritten (--resume continues it)"
            )

    def __iter__(self) -> Iterator[int]:
        return iter(self.progress)

    @property
    def elapsed(self) -> float:
        return self.progress.elapsed

    @property
    def history(self) -> list[dict]:
        return self.progress.history

    def draws(self, epoch: int) -> torch.Generator:
        """What augmentation and LayerDrop draw from in ``epoch``: ``g`` in one process; under
        torchrun, a generator of this rank's own (``Dist.draws``)."""
        return self.dist.draws(self.g, self.seed, epoch)

    def end_epoch_with(self, record: dict) -> None:
        """Log the epoch's figures and write the checkpoint (rank 0 only, under torchrun)."""
        self.progress.record(record)
        meta = {
            **self.progress.state(),
            "step": self.step,
            "generator_state": self.g.get_state().tolist(),
            "config": self.config,
        }
        if self.dist.is_main:
            save_checkpoint(self.ckpt_dir, self.model, self.opt, meta)

    def finished(self) -> bool:
        return self.progress.finished()


def weights_id(bundle, name: str) -> dict[str, str]:
    """A bundle's weight set by content (its file's sha256): a run's starting weights, for its
    settings, so a resume is matched to the same weights wherever the bundle now lies."""
    from skipvit.model.bundle import sha256_file

    return {"weights": name, "sha256": sha256_file(bundle.root / bundle.weight_sets[name])}


def run_settings(train: dict, args, split: dict, arch, init: dict | None) -> dict:
    """What determines a training run's result, for ``EpochRunner`` to check on --resume: its
    training settings, the data it reads (``--data``, the split, ``--data-opt``, ``--limit-train``),
    the architecture and the weights it starts from (``weights_id``)."""
    data = {
        "name": args.data,
        "split": split,
        "options": dict(args.data_opt),
        "limit_train": args.limit_train,
    }
    return {"train": train, "data": data, "architecture": arch.to_dict(), "init": init}


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def train_batches(
    data: ArrayData,
    info: DatasetInfo,
    batch_size: int,
    aug: AugmentConfig,
    g: torch.Generator,
    device: torch.device,
    desc: str,
    dist: Dist = SINGLE,
    draws: torch.Generator | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of ``data`` in shuffled batches of ``batch_size`` (order drawn from ``g``,
    augmentation from ``draws``, default ``g``): normalised, augmented images (B, C, H, W) and labels
    (B,) on ``device``, under a progress bar (the returned tqdm: ``set_postfix`` on it). Under
    torchrun, ``batch_size`` is the global batch and each rank gets its rows of it (``Dist.batches``)."""
    draws = g if draws is None else draws

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        for idx in dist.batches(len(data), batch_size, g):
            x = to_float(data.images[idx], info.mean, info.std)  # (b, C, H, W)
            yield (
                augment(x, aug, info.hflip, draws, info.mean, info.std).to(device),
                data.labels[idx].to(device),
            )

    total = steps_per_epoch(len(data), batch_size)
    return tqdm(batches(), total=total, desc=desc, leave=False, mininterval=1.0, disable=not dist.is_main)
