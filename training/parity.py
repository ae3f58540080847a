"""`skipvit parity`: the parity task of "L2 Norm Guided Adaptive Computation" (Table 1), a GRU
cell with and without LAC.

Task (Graves 2016, as the paper uses it): a sequence of ``length`` = 16 digits in {1, −1, 0}; a
random number k ∈ [1, 16] of positions, chosen at random, hold ±1 (each sign with probability
1/2), the rest 0. The target is the parity of the number of 1s (1 if odd). The whole sequence is
one input vector x ∈ R^16, presented at every step.

Model: h_0 = 0, h_{t+1} = GRUCell(x, h_t) (hidden size 128), for at most T = 10 steps; a linear
head reads the final (or halted) state. Three variants, trained from scratch each:

- ``none``: the plain RNN, always T steps;
- ``per-example``: LAC (``model.lac``) on each row's ‖h_t‖₂; a halted row keeps its state (it is
  masked out of the later steps) and is answered from it;
- ``per-batch``: LAC on the norm of the whole (B, H) state; the batch stops together.

LAC is in the loop in training as at test time (the paper trains the GRU with LAC halting): the
halting decisions are taken on detached norms and are not differentiated; the cross-entropy of
the head on the halted state trains the cell through the steps that ran. Adam (lr 3e-3, cosine
decay to 1% over 20,000 steps, gradient-norm clip 1), fresh random batches every step (the task has
3^16 inputs: no epochs, no overfitting to a fixed set). The paper gives no optimiser settings.
Tuning, all modes alike: at lr 1e-3 (constant) every mode was still at chance after 3,000 steps;
at 3e-3 the RNN leaves chance near step 2,500, the LAC variants near 4,000-5,000, and with the
decay over 12,000 steps the LAC variants stopped at 0.73 (per-batch) and 0.80 (per-example), hence
20,000 steps. Test: a fresh set from another seed, in batches of the training batch size (per-batch
LAC depends on the batch), accuracy and mean steps per sequence. Each mode takes a minute or two
on a CPU, so there is no checkpoint or resume: rerun the command.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skipvit import flags
from skipvit.model.lac import LACTracker, check_alpha, state_norm
from skipvit.training.configs import config_from
from skipvit.training.schedule import warmup_cosine

MODES = ("none", "per-batch", "per-example")
PAPER = {  # L2 Norm Guided Adaptive Computation, Table 1: (accuracy, steps)
    "none": (1.0, 10),
    "per-batch": (1.0, 3),
    "per-example": (1.0, 3),
}
LABELS = {"none": "RNN", "per-batch": "RNN + LAC per-batch", "per-example": "RNN + LAC per-example"}


@dataclass(frozen=True)
class ParityConfig:
    mode: str = "none"
    alpha: float = 1.0
    length: int = 16
    hidden: int = 128
    max_steps: int = 10  # T
    batch_size: int = 128
    train_steps: int = 20_000
    lr: float = 3e-3  # cosine-decayed to 1% over the run
    grad_clip: float = 1.0
    test_size: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode {self.mode!r}: choose one of {', '.join(MODES)}")
        check_alpha(self.alpha)
        for name in ("length", "hidden", "max_steps", "batch_size", "train_steps", "test_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def parity_batch(n: int, length: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` sequences (n, length) float in {1, −1, 0} and their targets (n,) int64."""
    k = torch.randint(1, length + 1, (n, 1), generator=g)  # (n, 1): how many digits are non-zero
    ranks = torch.rand(n, length, generator=g).argsort(dim=1).argsort(dim=1)  # (n, length): a permutation
    nonzero = ranks < k  # (n, length): k random positions
    sign = torch.randint(0, 2, (n, length), generator=g) * 2 - 1  # (n, length) in {−1, 1}
    x = (nonzero * sign).float()  # (n, length)
    y = (x == 1).sum(dim=1) % 2  # (n,)
    return x, y


class ParityGRU(nn.Module):
    """GRU cell unrolled on a fixed input, with optional LAC halting (module docstring)."""

    def __init__(self, length: int, hidden: int) -> None:
        super().__init__()
        self.cell = nn.GRUCell(length, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: Tensor, max_steps: int, mode: str = "none", alpha: float = 1.0):
        """Returns logits (B, 2) and the steps each row ran (B,) int64."""
        b = x.shape[0]
        h = x.new_zeros(b, self.cell.hidden_size)  # (B, H): h_0
        steps = torch.zeros(b, dtype=torch.long, device=x.device)
        if mode == "none":
            for _ in range(max_steps):
                h = self.cell(x, h)
            return self.head(h), steps + max_steps
        alive = torch.ones(b, dtype=torch.bool, device=x.device)
        tracker = LACTracker(state_norm(h, mode), alpha)
        for _ in range(max_steps):
            # With h = h_t (t steps run): halt if δ_t, the change made by step t, is below λ_t.
            halt = tracker.step(state_norm(h, mode)).expand(b)  # (B,)
            alive = alive & ~halt
            if not bool(alive.any()):
                break
            h = torch.where(alive[:, None], self.cell(x, h), h)  # halted rows keep their state
            steps += alive
        return self.head(h), steps


def train(cfg: ParityConfig, log_every: int = 500, device: str = "cpu") -> tuple[ParityGRU, list[dict]]:
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = ParityGRU(cfg.length, cfg.hidden).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history, t0 = [], time.time()
    correct = seen = steps_sum = 0
    loss_sum = 0.0
    for step in range(1, cfg.train_steps + 1):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step - 1, cfg.train_steps, 0, cfg.lr)
        x, y = parity_batch(cfg.batch_size, cfg.length, g)
        x, y = x.to(device), y.to(device)
        logits, steps = model(x, cfg.max_steps, cfg.mode, cfg.alpha)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(-1) == y).sum().item()
        steps_sum += steps.sum().item()
        seen += len(y)
        if step % log_every == 0 or step == cfg.train_steps:
            rec = {
                "step": step,
                "loss": round(loss_sum / seen, 4),
                "acc": round(correct / seen, 4),
                "steps": round(steps_sum / seen, 3),
                "elapsed_s": round(time.time() - t0, 1),
            }
            history.append(rec)
            print(
                f"  [{cfg.mode}] step {step}: loss {rec['loss']} acc {rec['acc']} steps {rec['steps']} "
                f"({rec['elapsed_s']} s)",
                flush=True,
            )
            correct = seen = steps_sum = 0
            loss_sum = 0.0
    return model, history


@torch.no_grad()
def evaluate(model: ParityGRU, cfg: ParityConfig, device: str = "cpu") -> dict:
    """Accuracy and mean steps on a fresh test set (seed ``cfg.seed + 10_000``), in batches of
    ``cfg.batch_size`` (per-batch LAC halts each batch together)."""
    g = torch.Generator().manual_seed(cfg.seed + 10_000)
    model.eval()
    correct = steps_sum = 0
    hist = torch.zeros(cfg.max_steps + 1, dtype=torch.long)
    for start in range(0, cfg.test_size, cfg.batch_size):
        n = min(cfg.batch_size, cfg.test_size - start)
        x, y = parity_batch(n, cfg.length, g)
        logits, steps = model(x.to(device), cfg.max_steps, cfg.mode, cfg.alpha)
        correct += (logits.argmax(-1).cpu() == y).sum().item()
        steps_sum += steps.sum().item()
        hist += torch.bincount(steps.cpu(), minlength=cfg.max_steps + 1)
    model.train()
    return {
        "accuracy": correct / cfg.test_size,
        "mean_steps": steps_sum / cfg.test_size,
        "steps_histogram": hist.tolist(),
        "n": cfg.test_size,
    }


def run_mode(cfg: ParityConfig, device: str = "cpu") -> dict:
    t0 = time.time()
    model, history = train(cfg, device=device)
    train_s = time.time() - t0
    result = evaluate(model, cfg, device)
    return {"config": asdict(cfg), "test": result, "history": history, "train_s": round(train_s, 1)}


def markdown(results: list[dict]) -> str:
    lines = [
        "| method | paper accuracy | paper steps | our accuracy | our mean steps | steps histogram (0..T) | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        mode = r["config"]["mode"]
        acc, steps = PAPER[mode]
        alpha = f" (α = {r['config']['alpha']:g})" if mode != "none" else ""
        t = r["test"]
        lines.append(
            f"| {LABELS[mode]}{alpha} | {acc} | {steps} | {t['accuracy']:.4f} | {t['mean_steps']:.3f} "
            f"| {' '.join(map(str, t['steps_histogram']))} | {r['train_s']} |"
        )
    return "\n".join(lines)


def add_arguments(p) -> None:
    p.add_argument("--mode", default="all", choices=["all", *MODES])
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=10, help="T, the most GRU steps")
    p.add_argument("--length", type=int, default=16, help="sequence length")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-steps", type=int, default=20_000, help="optimiser steps per mode")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (cosine decay to 1%%)")
    p.add_argument("--test-size", type=int, default=10_000)
    flags.add_seed(p)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    flags.add_device(p, default="cpu")
    p.add_argument("--out", default="runs/parity/parity.json", help="results JSON (the table is printed)")


def run(args) -> None:
    from skipvit.training.device import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    modes = MODES if args.mode == "all" else (args.mode,)
    configs = [config_from(ParityConfig, args, mode=mode, max_steps=args.steps) for mode in modes]
    results = []
    for cfg in configs:
        label = LABELS[cfg.mode]
        print(f"parity: training {label} | {cfg}", flush=True)
        results.append(run_mode(cfg, device))
        t = results[-1]["test"]
        print(f"parity: {label}: test accuracy {t['accuracy']:.4f}, mean steps {t['mean_steps']:.3f}")
    table = markdown(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": args.argv, "results": results, "markdown": table}, indent=2) + "\n")
    print()
    print(table)
    print(f"\nwritten to {out}")
