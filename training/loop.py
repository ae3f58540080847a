"""Checkpointed epochs shared by the training commands: start fresh or `--resume`, save a
checkpoint after every epoch, and `--stop-after N` to split a long run across sessions."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skipvit.training.checkpoint import (
    CKPT_META,
    changed_settings,
    has_checkpoint,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)


class EpochRunner:
    """``config``: the settings that determine the result (data and split, seed, epochs, learning
    rates, the starting weights, the method's own settings), JSON-like. It is saved with every
    checkpoint, and ``--resume`` refuses a checkpoint written under other settings: continuing it
    would give neither run's result, and a checkpoint already past ``--epochs`` would write a
    bundle whose report claims settings it never trained with."""

    def __init__(
        self,
        args,
        ckpt_dir: Path,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        seed: int,
        epochs: int,
        config: dict[str, Any],
    ) -> None:
        self.ckpt_dir, self.model, self.opt, self.epochs = ckpt_dir, model, opt, epochs
        self.config = json.loads(json.dumps(config))
        self.g = torch.Generator().manual_seed(seed)  # shuffling and augmentation
        self.start_epoch, self.step, self.elapsed, self.history = 0, 0, 0.0, []
        if args.resume:
            self._check_settings(read_meta(ckpt_dir))
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

    def _check_settings(self, meta: dict[str, Any]) -> None:
        where = self.ckpt_dir / CKPT_META
        if "config" not in meta:
            raise ValueError(
                f"{where} records no settings (written before resumes were checked), so "
                "it cannot be matched to this run; Hint: drop --resume to start fresh"
            )
        changed = changed_settings(meta["config"], self.config)
        if changed:
            raise ValueError(
                f"{where} was written by a run with other settings ({', '.join(changed)}); "
                "Hint: drop --resume, or repeat the original flags"
            )

    def __iter__(self):
        for epoch in range(self.start_epoch, self.end_epoch):
            self._t0 = time.time()
            yield epoch

    def end_epoch_with(self, record: dict) -> None:
        """Log the epoch's figures and write the checkpoint."""
        self.elapsed += time.time() - self._t0
        self.history.append({**record, "elapsed_s": round(self.elapsed, 1)})
        meta = {
            "epoch": record["epoch"],
            "step": self.step,
            "elapsed_s": self.elapsed,
            "history": self.history,
            "generator_state": self.g.get_state().tolist(),
            "config": self.config,
        }
        save_checkpoint(self.ckpt_dir, self.model, self.opt, meta)

    def finished(self) -> bool:
        if self.end_epoch < self.epochs:
            print(
                f"stopped after epoch {self.end_epoch}/{self.epochs}; continue with --resume "
                f"(checkpoint in {self.ckpt_dir})"
            )
            return False
        return True


def weights_id(bundle, name: str) -> dict[str, str]:
    """A bundle's weight set by content (its file's sha256): a run's starting weights, for its
    settings, so a resume is matched to the same weights wherever the bundle now lies."""
    from skipvit.model.bundle import sha256_file

    return {"weights": name, "sha256": sha256_file(bundle.root / bundle.weight_sets[name])}
