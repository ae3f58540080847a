"""Checkpointed epochs shared by the training commands: start fresh or `--resume`, save a
checkpoint after every epoch, and `--stop-after N` to split a long run across sessions."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from training.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint


class EpochRunner:
    def __init__(
        self, args, ckpt_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, seed: int, epochs: int
    ) -> None:
        self.ckpt_dir, self.model, self.opt, self.epochs = ckpt_dir, model, opt, epochs
        self.g = torch.Generator().manual_seed(seed)  # shuffling and augmentation
        self.start_epoch, self.step, self.elapsed, self.history = 0, 0, 0.0, []
        if args.resume:
            meta = load_checkpoint(ckpt_dir, model, opt)
            self.start_epoch, self.step = meta["epoch"], meta["step"]
            self.elapsed, self.history = meta["elapsed_s"], meta["history"]
            self.g.set_state(torch.tensor(meta["generator_state"], dtype=torch.uint8))
            print(f"resumed from {ckpt_dir} at epoch {self.start_epoch}")
        elif has_checkpoint(ckpt_dir):
            print(
                f"note: {ckpt_dir} holds an older checkpoint; it will be overwritten (--resume continues it)"
            )
        stop = args.stop_after
        self.end_epoch = epochs if stop is None else min(epochs, self.start_epoch + stop)
        self._t0 = 0.0

    def __iter__(self):
        for epoch in range(self.start_epoch, self.end_epoch):
            self._t0 = time.time()
            yield epoch

    def end_epoch_with(self, record: dict) -> None:
        """Log the epoch's figures and write the checkpoint."""
        self.elapsed += time.time() - self._t0
        self.history.append({**record, "elapsed_s": round(self.elapsed, 1)})
        meta = {"epoch": record["epoch"], "step": self.step, "elapsed_s": self.elapsed,
                "history": self.history, "generator_state": self.g.get_state().tolist()}  # fmt: skip
        save_checkpoint(self.ckpt_dir, self.model, self.opt, meta)

    def finished(self) -> bool:
        if self.end_epoch < self.epochs:
            print(f"stopped after epoch {self.end_epoch}/{self.epochs}; continue with --resume "
                  f"(checkpoint in {self.ckpt_dir})")  # fmt: skip
            return False
        return True
