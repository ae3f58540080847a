"""Scoring gate configurations for the NSGA search: every configuration on the same images in one
forward (per-row thresholds), their fitness, and the joint search's fine-tuning steps."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from skipvit.model.gates import GatePolicy
from skipvit.model.vit import AdaptiveViT
from skipvit.training.data.augment import augment, to_float
from skipvit.training.data.base import ArrayData, DatasetInfo
from skipvit.training.device import autocast, full_precision
from skipvit.training.optim import gradient_step
from skipvit.training.reinforce import RewardConfig, RLConfig, rewards, rl_step, teacher_logits


@torch.inference_mode()
def score(model: AdaptiveViT, x: Tensor, y: Tensor, genes: np.ndarray, rows_per_forward: int = 8192):
    """Run every configuration (row of ``genes``, (n, L)) on the same images ``x`` (B, C, H, W,
    normalised, on the model's device): configurations are stacked along the batch with per-row
    thresholds. Returns correct (n, B) bool and executed (n, B, L) bool, on the CPU."""
    was_training = model.training
    model.eval()
    n, b, depth = len(genes), x.shape[0], model.depth
    thresholds = torch.as_tensor(np.asarray(genes, dtype=np.float32))
    per = max(1, rows_per_forward // b)
    correct, executed = [], []
    for start in range(0, n, per):
        thr = thresholds[start : start + per]
        c = len(thr)
        rows = thr.repeat_interleave(b, dim=0).to(x.device)  # (c*B, L)
        with full_precision(x.device):
            out = model(x.repeat(c, 1, 1, 1), GatePolicy(model.agent, rows))
        correct.append((out.logits.argmax(-1) == y.repeat(c)).view(c, b).cpu())
        executed.append(out.executed.view(c, b, depth).cpu())
    model.train(was_training)
    return torch.cat(correct), torch.cat(executed)


def score_split(model, data: ArrayData, info: DatasetInfo, genes, device, batch: int = 1024, rows=8192):
    """``score`` over a whole split, in batches of images: correct (n, N), executed (n, N, L)."""
    correct, executed = [], []
    for images, labels in data.batches(batch):
        x = to_float(images.to(device), info.mean, info.std)
        c, e = score(model, x, labels.to(device), genes, rows)
        correct.append(c)
        executed.append(e)
    return torch.cat(correct, dim=1), torch.cat(executed, dim=1)


def fitness(correct: Tensor, executed: Tensor, reward: RewardConfig) -> dict[str, np.ndarray]:
    """Per configuration: accuracy, mean layers, relative compute and mean RL reward."""
    n, b, depth = executed.shape
    r = rewards(correct.reshape(-1), executed.reshape(n * b, depth), reward).view(n, b)
    layers = executed.float().sum(2).mean(1)
    return {
        "accuracy": correct.float().mean(1).numpy(),
        "mean_layers": layers.numpy(),
        "compute": (layers / depth).numpy(),
        "reward": r.mean(1).numpy(),
    }


def batch_generator(seed: int, generation: int, stream: int) -> torch.Generator:
    """A generator for one generation's validation batch (stream 0) or training batches (stream 1),
    so a resumed search draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed(1_000_003 * seed + 7919 * generation + stream)


def finetune(
    model,
    opt,
    train: ArrayData,
    info: DatasetInfo,
    genes: np.ndarray,
    rl_cfg: RLConfig,
    steps: int,
    g: torch.Generator,
    device,
    teacher: AdaptiveViT | None = None,
) -> dict:
    """``steps`` weight updates; each row runs under a configuration drawn from ``genes`` (P, L);
    with a ``teacher`` (run with every layer), ``rl_cfg.distill`` of the classification loss is
    distillation from it."""
    thresholds = torch.as_tensor(np.asarray(genes, dtype=np.float32))
    model.train()
    totals = {"ce": 0.0, "correct": 0, "layers": 0.0, "n": 0}
    for _ in range(steps):
        idx = torch.randint(len(train), (rl_cfg.batch_size,), generator=g)
        x = to_float(train.images[idx], info.mean, info.std)
        x = augment(x, rl_cfg.augment, info.hflip, g, info.mean, info.std)
        y = train.labels[idx].to(device)
        rows = thresholds[torch.randint(len(thresholds), (len(idx),), generator=g)].to(device)
        x = x.to(device)
        with autocast(device):
            loss, st = rl_step(model, x, y, rl_cfg, rows, teacher_logits=teacher_logits(teacher, x))
        gradient_step(opt, loss, rl_cfg.grad_clip)
        totals["ce"] += st["ce"] * len(y)
        totals["correct"] += st["correct"]
        totals["layers"] += st["layers"] * len(y)
        totals["n"] += len(y)
    model.eval()
    n = max(1, totals["n"])
    return {"ce": totals["ce"] / n, "train_acc": totals["correct"] / n, "train_layers": totals["layers"] / n}
