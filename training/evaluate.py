"""Evaluate a model under a policy on a split: accuracy and layers run."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from skipvit.model.policy import ExecutionPolicy
from skipvit.model.vit import AdaptiveViT
from skipvit.training.data.augment import to_float
from skipvit.training.data.base import ArrayData
from skipvit.training.device import full_precision


@dataclass
class EvalResult:
    accuracy: float
    mean_layers: float
    n: int
    correct: torch.Tensor  # (N,) bool
    executed: torch.Tensor  # (N, L) bool
    predictions: torch.Tensor  # (N,)

    def metrics(self, depth: int, split: str) -> dict:
        return {
            "accuracy": round(self.accuracy, 5),
            "mean_layers": round(self.mean_layers, 4),
            "relative_compute": round(self.mean_layers / depth, 4),
            "split": split,
            "n": self.n,
        }


@torch.inference_mode()
def evaluate(
    model: AdaptiveViT,
    data: ArrayData,
    mean,
    std,
    policy: ExecutionPolicy | None = None,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> EvalResult:
    device = torch.device(device)
    was_training = model.training
    model.eval()
    preds, executed = [], []
    for images, _ in data.batches(batch_size):
        x = to_float(images.to(device), mean, std)
        with full_precision(device):
            out = model(x, policy)
        preds.append(out.logits.argmax(-1).cpu())
        executed.append(out.executed.cpu())
    model.train(was_training)
    pred = torch.cat(preds)
    ex = torch.cat(executed)
    correct = pred == data.labels
    return EvalResult(
        accuracy=correct.float().mean().item(),
        mean_layers=ex.sum(1).float().mean().item(),
        n=len(data),
        correct=correct,
        executed=ex,
        predictions=pred,
    )
