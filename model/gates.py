"""RL layer-skipping sub-agents (thesis ch. 3.4): before layer j, a linear layer + sigmoid on the
CLS token gives p_j, the probability of running layer j.

Inference rule: run iff p_j >= threshold_j (default 0.5). Thresholds are a (B, L) tensor so that
rows served at different operating points share one forward; a negative threshold (the NSGA
gene -1) removes the layer: it never runs, in training or inference. During training the action
is sampled from Bernoulli(p_j) and its log-probability recorded for REINFORCE (zero where the
layer is removed: that is no decision of the agent); an optional exploration floor f samples from
f + (1 - 2f) p_j instead, so that no layer dies in training (a layer never run gets no gradient); a per-layer baseline (a two-layer MLP on the
CLS token) estimates the return and is trained by MSE. The baseline is a training aid only:
inference never calls it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skipvit.model.policy import RUN, SKIP, ExecutionPolicy


class SkipAgent(nn.Module):
    def __init__(self, dim: int, depth: int, baseline_hidden: int = 64, init_bias: float = 2.0) -> None:
        super().__init__()
        self.gates = nn.ModuleList([nn.Linear(dim, 1) for _ in range(depth)])
        self.baselines = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(dim, baseline_hidden), nn.GELU(), nn.Linear(baseline_hidden, 1))
                for _ in range(depth)
            ]
        )
        for g in self.gates:
            nn.init.zeros_(g.weight)
            nn.init.constant_(g.bias, init_bias)  # start by running layers (p = sigmoid(init_bias))

    @property
    def depth(self) -> int:
        return len(self.gates)

    def prob(self, layer: int, cls: Tensor) -> Tensor:  # cls: (B, D) -> (B,)
        g = self.gates[layer]  # F.linear, not g(cls): a module call costs as much as the gate itself
        return torch.sigmoid(F.linear(cls, g.weight, g.bias).squeeze(-1).float())

    def baseline(self, layer: int, cls: Tensor) -> Tensor:  # (B, D) -> (B,)
        return self.baselines[layer](cls).squeeze(-1).float()

    @staticmethod
    def hidden_from_state(state: dict[str, Tensor], prefix: str = "agent.") -> int:
        return int(state[f"{prefix}baselines.0.0.weight"].shape[0])


def thresholds_tensor(thresholds, batch: int, depth: int, device) -> Tensor:
    """Broadcast a scalar, an (L,) list or a (B, L) tensor of thresholds to (B, L) float32."""
    t = torch.as_tensor(thresholds, dtype=torch.float32, device=device)
    if t.dim() == 0:
        t = t.expand(depth)
    if t.shape[-1] != depth:
        raise ValueError(f"thresholds have {t.shape[-1]} entries; the model has {depth} layers")
    return t.expand(batch, depth) if t.dim() == 1 else t


class GatePolicy(ExecutionPolicy):
    """Run layer j for a row iff its gate says so: thresholded at inference, sampled in training."""

    def __init__(self, agent: SkipAgent, thresholds=0.5, *, sample: bool = False, floor: float = 0.0) -> None:
        if not 0.0 <= floor < 0.5:
            raise ValueError(f"the exploration floor must lie in [0, 0.5), got {floor}")
        self.agent = agent
        self.thresholds = thresholds
        self.sample = sample
        self.floor = floor  # training only: actions are sampled from floor + (1 - 2 floor) p
        self.log_probs: list[Tensor] = []  # each (B,): log pi(a_j | c_j) of the sampled action
        self.cls: list[Tensor] = []  # each (B, D): the CLS token the gate saw (for the baseline)
        self._thr: Tensor | None = None
        self._run_thr: Tensor | None = None  # (B, L): the threshold, +inf where the layer is removed

    @property
    def may_exit(self) -> bool:
        return False

    def begin(self, h: Tensor) -> None:
        self.log_probs, self.cls = [], []
        self._thr = thresholds_tensor(self.thresholds, h.shape[0], self.agent.depth, h.device)
        self._run_thr = torch.where(self._thr >= 0, self._thr, torch.inf)

    def run_mask(self, layer: int, h: Tensor, alive: Tensor) -> Tensor:
        if self.sample:
            return super().run_mask(layer, h, alive)
        # Inference: p_j >= threshold_j; a removed layer's +inf threshold is never reached.
        return self.agent.prob(layer, h[:, 0]) >= self._run_thr[:, layer]  # (B,)

    def decide(self, layer: int, h: Tensor, alive: Tensor) -> Tensor:
        # The gate reads a detached CLS token: the policy gradient trains the gates only, and the
        # backbone learns from cross-entropy on the paths the gates choose.
        cls = h[:, 0].detach()  # (B, D)
        p = self.agent.prob(layer, cls)  # (B,)
        thr = self._thr[:, layer]  # (B,)
        kept = thr >= 0  # a negative threshold removes the layer
        if self.sample:
            # An exploration floor keeps every layer alive: the sampled probability stays in
            # [floor, 1 - floor], and the log-probability is of that distribution (on-policy).
            p = self.floor + (1 - 2 * self.floor) * p if self.floor else p
            run = torch.bernoulli(p.detach()).bool() & kept
            eps = 1e-6
            log_prob = torch.where(run, (p + eps).log(), (1 - p + eps).log())
            self.log_probs.append(torch.where(kept, log_prob, torch.zeros_like(log_prob)))
            self.cls.append(cls)
        else:
            run = kept & (p >= thr)
        return torch.where(run, RUN, SKIP).to(torch.int8)
