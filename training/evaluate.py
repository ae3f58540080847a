"""Evaluate a model under a policy on a split (accuracy and layers run), and a bundle point as the
service serves it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from skipvit.model.bundle import Bundle, Point, load_bundle
from skipvit.model.points import batch_key, policy_for
from skipvit.model.policy import ExecutionPolicy
from skipvit.model.vit import AdaptiveViT
from skipvit.training.data import bundle_data
from skipvit.training.data.augment import to_float
from skipvit.training.data.base import ArrayData
from skipvit.training.device import full_precision, resolve_device
from skipvit.training.stats import accuracy_ci95


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
            "accuracy_ci95": accuracy_ci95(self.accuracy, self.n),
        }

    def val_metrics(self, depth: int) -> dict:
        """The keys a point's metrics carry for the validation split, which every selection reads."""
        return {
            "val_accuracy": round(self.accuracy, 5),
            "val_mean_layers": round(self.mean_layers, 4),
            "val_relative_compute": round(self.mean_layers / depth, 4),
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


@dataclass
class PointEval:
    """A bundle point evaluated on (the head of) a split: what was run and what came out."""

    bundle: Bundle
    point: Point
    model: AdaptiveViT
    data: ArrayData
    device: torch.device
    result: EvalResult


def evaluate_point(
    bundle_dir,
    point_id: str | None,
    split: str,
    limit: int | None,
    data_dir,
    batch_size: int,
    device: str,
    data: str | None = None,
) -> PointEval:
    """Point ``point_id`` (default: the bundle's default point) of the bundle at ``bundle_dir`` on the
    first ``limit`` images of ``split``, through its policy as the service serves it: a point whose
    rows cannot share a forward (per-batch LAC) runs one request per forward, of the size it was
    measured at."""
    bundle = load_bundle(bundle_dir)
    point = bundle.point(point_id)
    dev = resolve_device(device)
    ds = bundle.dataset
    data = bundle_data(bundle, data_dir, data).split(split).head(limit)
    model = bundle.build_model(point.weights, dev)
    # A point whose rows cannot share a forward runs one request per forward: as measured, a
    # request of ``request_images`` (per-batch LAC), else of one image.
    served_batch = int(point.params.get("request_images", 1)) if batch_key(point) is None else batch_size
    res = evaluate(model, data, ds["mean"], ds["std"], policy_for(point, model), served_batch, dev)
    return PointEval(bundle, point, model, data, dev, res)
