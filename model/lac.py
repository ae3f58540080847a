"""LAC, from "L2 Norm Guided Adaptive Computation": halt when the L2 norm of the hidden state stops growing.

Nothing is trained; ``alpha`` is the knob. With ``h_t`` the hidden state after ``t`` steps
(``h_0``: the embedding output for the ViT, the initial state for an RNN) and ``n_t = ‖h_t‖₂``:

    δ_t = n_t − n_{t−1}                           the change made by step t
    λ_t = α · |max(Δ_t) − min(Δ_t)|,  Δ_t = {0, δ_1, …, δ_{t−1}}
    halt after t steps  iff  δ_t < λ_t  and  λ_t > 0

Indexing in the ViT loop: ``decide(j, h)`` is called before layer ``j`` with ``h = h_j``, the
state after layers ``0 … j−1``. So the decision before layer j compares the change made by
layer j−1 (``n_j − n_{j−1}``, the norms after layers j−1 and j−2) with the spread of the changes
made by layers 0 … j−2. A row that halts there is answered by the model's head from ``h_j``,
having run j layers.

Which activation: the residual stream, i.e. the ViT block output (B, T, D) over all T tokens
(CLS and patches) and all D channels, before the final LayerNorm; the GRU's hidden state (B, H)
for parity. Per-example mode takes one norm per row (over T·D); per-batch mode takes one norm of
the whole (B, T, D) batch, so all rows halt together. Norms are taken in float32.

Where the paper is silent we follow the authors' reference code (Scenic ``lac_uvit.py``):

- Δ is a buffer that starts at zero, so 0 is always in it: λ_t = α·(max(0, δ_1…) − min(0, δ_1…)).
  Before layer 0 nothing has changed (δ_0 = 0, λ_0 = 0) and before layer 1 the buffer holds only
  its zero (λ_1 = 0). The reference never halts on a zero threshold (its test is |δ| < λ), so
  here too ``λ_t = 0`` never halts: **the first two layers always run** (and α = 0 never halts).
- A halted row stays halted; its state is the one it halted with.

Where the paper is explicit we follow the paper: the test is on the signed change, δ_t < λ_t (a
shrinking norm counts as no progress), where the reference compares |δ_t|; and the decision uses
the latest change, δ_t = n_t − n_{t−1}, where the reference takes the norm of a step's *input*
and so decides one step late (its minimum is three steps, ours two).

A larger α raises every λ_t and never lowers one, and the trajectory up to the halt does not depend
on α, so on the same input a smaller α never runs fewer steps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from skipvit.model.policy import EXIT, RUN, ExecutionPolicy

MODES = ("per-example", "per-batch")


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(
            f"LAC alpha must be a finite number >= 0, got {alpha!r}; Hint: the paper uses (0, 1] "
            "(1.0 for parity, 0.8 for images); 0 never halts"
        )
    return alpha


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"LAC mode {mode!r} is unknown; Hint: use one of {', '.join(MODES)}")
    return mode


def state_norm(h: Tensor, mode: str) -> Tensor:
    """‖h‖₂ per row (B,) in per-example mode, of the whole batch as a (1,) tensor in per-batch."""
    rows = torch.linalg.vector_norm(h.detach().flatten(1), dim=1, dtype=torch.float32)  # (B,)
    if mode == "per-batch":
        return torch.linalg.vector_norm(rows).reshape(1)  # (1,): sqrt of the sum over every element
    return rows


class LACTracker:
    """The running statistics of the halting rule for one forward: n_{t−1}, max Δ and min Δ.

    ``step(n_t)`` takes the norm after t steps (t = 0 first: δ_0 = 0, never halts) and returns
    which rows halt there. Shapes follow the norm: (B,) per example, (1,) per batch.
    """

    def __init__(self, norm0: Tensor, alpha: float | Tensor) -> None:
        self.prev = norm0  # n_{t-1}
        self.hi = torch.zeros_like(norm0)  # max(Δ_t); the buffer starts at 0
        self.lo = torch.zeros_like(norm0)  # min(Δ_t)
        self.alpha = torch.as_tensor(alpha, dtype=norm0.dtype, device=norm0.device)

    def step(self, norm: Tensor) -> Tensor:
        delta = norm - self.prev  # δ_t
        threshold = self.alpha * (self.hi - self.lo)  # λ_t = α·|max Δ − min Δ|
        halt = (delta < threshold) & (threshold > 0)
        self.hi = torch.maximum(self.hi, delta)
        self.lo = torch.minimum(self.lo, delta)
        self.prev = norm
        return halt


def lac_steps(norms, alpha: float) -> int:
    """Steps one sequence runs, given the norms n_0, n_1, … of its states (the pure rule).

    ``norms[t]`` is the norm after t steps; with ``len(norms) = T + 1`` at most T steps run
    (the norm after the last step is never looked at)."""
    n = torch.as_tensor(norms, dtype=torch.float64)
    tracker = LACTracker(n[:1], check_alpha(alpha))
    for t in range(len(n) - 1):
        if bool(tracker.step(n[t : t + 1])):
            return t
    return len(n) - 1


class LACPolicy(ExecutionPolicy):
    """LAC as an execution policy: rows (or the whole batch) EXIT when the rule halts them.

    ``alpha`` is one float, or in per-example mode one per row ((B,) tensor or list) so rows of
    different LAC points share a forward. Never SKIPs: a halted row is answered by the model's
    head from its current state."""

    def __init__(self, alpha: float | Tensor | list[float], mode: str = "per-example") -> None:
        self.mode = check_mode(mode)
        if isinstance(alpha, int | float):
            self.alpha: float | Tensor = check_alpha(alpha)
        else:
            t = torch.as_tensor(alpha, dtype=torch.float32).flatten()  # (B,)
            for a in t.tolist():
                check_alpha(a)
            if mode == "per-batch" and t.unique().numel() > 1:
                raise ValueError(
                    "per-batch LAC halts the batch together: it takes one alpha, not one per row"
                )
            self.alpha = t
        self._tracker: LACTracker | None = None

    def begin(self, h: Tensor) -> None:  # h: (B, T, D), h_0
        alpha = self.alpha
        if isinstance(alpha, Tensor):
            if self.mode == "per-batch":
                alpha = float(alpha[0])
            elif alpha.numel() != h.shape[0]:
                raise ValueError(f"{alpha.numel()} per-row alphas for a batch of {h.shape[0]} rows")
            else:
                alpha = alpha.to(h.device)
        self._tracker = LACTracker(state_norm(h, self.mode), alpha)

    def decide(self, layer: int, h: Tensor, alive: Tensor) -> Tensor:
        # h = h_layer, the state after layers 0 … layer−1; the first call (layer 0) sees h_0 again
        assert self._tracker is not None, "begin() must be called before decide()"
        halt = self._tracker.step(state_norm(h, self.mode))  # (B,) or (1,)
        halt = halt.expand(h.shape[0])  # (B,): per batch, every row halts together
        return torch.where(halt, EXIT, RUN).to(torch.int8)
