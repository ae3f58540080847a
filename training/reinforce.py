"""REINFORCE with a learned baseline for the skip agents (thesis eqs. 3.6-3.13), and the training
step of `train rl` that the joint NSGA search also takes.

R = w_acc * A - w_layers * L + eps, per image: A = 1 if the prediction is correct, L = the
fraction of layers run, eps = -1e-5 (the thesis: a zero reward destabilises training). The
reward arrives after the last layer and is discounted back over the layers, G_j = gamma * G_{j+1}
(eq. 3.10), so G_j = gamma^(L-1-j) * R. Returns are whitened over the whole (B, L) matrix: per
layer whitening would cancel gamma, which only scales a layer's returns. Under torchrun the matrix
is the global batch's: its mean and standard deviation are taken across the processes
(``distributed.Dist.moments``), so each process whitens its rows as one process would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skipvit.model.gates import GatePolicy
from skipvit.model.policy import StaticPolicy
from skipvit.model.vit import AdaptiveViT
from skipvit.training.configs import config_from
from skipvit.training.data.augment import AugmentConfig
from skipvit.training.distributed import batch_moments
from skipvit.training.optim import param_groups


@dataclass(frozen=True)
class RewardConfig:
    gamma: float = 0.99
    eps: float = -1e-5
    w_acc: float = 1.0
    w_layers: float = 1.0


def reward_config(args) -> RewardConfig:
    """The reward flags (``skipvit.flags.add_reward``)."""
    return config_from(RewardConfig, args)


def rewards(correct: Tensor, executed: Tensor, cfg: RewardConfig) -> Tensor:
    """(B,) bool, (B, L) bool -> (B,) float."""
    return cfg.w_acc * correct.float() - cfg.w_layers * executed.float().mean(1) + cfg.eps


def discounted_returns(reward: Tensor, depth: int, gamma: float) -> Tensor:
    """(B,) -> (B, L): G_j = gamma^(L-1-j) * R."""
    powers = torch.arange(depth - 1, -1, -1, device=reward.device, dtype=reward.dtype)  # (L,)
    return reward[:, None] * gamma ** powers[None, :]  # (B, L)


def whiten(returns: Tensor, moments=batch_moments) -> Tensor:
    """Zero mean, unit variance over every entry of the (B, L) batch of returns; ``moments``
    gives their mean and standard deviation (None: too few entries, only the mean is taken off),
    by default of ``returns`` alone, in a distributed run of the global batch (``Dist.moments``)."""
    mean, std = moments(returns)
    return returns - mean if std is None else (returns - mean) / (std + 1e-8)


def reinforce_losses(log_probs: Tensor, returns: Tensor, baselines: Tensor) -> tuple[Tensor, Tensor]:
    """Policy loss -(G - b) log pi (b detached) and baseline MSE to G; all (B, L) in, scalars out."""
    advantage = (returns - baselines.detach()).detach()  # (B, L)
    policy_loss = -(advantage * log_probs).mean()
    baseline_loss = F.mse_loss(baselines, returns.detach())
    return policy_loss, baseline_loss


# ---------------------------------------------------------------- the training step


@dataclass(frozen=True)
class RLConfig:
    epochs: int = 6
    batch_size: int = 128
    lr: float = 2e-4  # backbone and head
    agent_lr: float = 1e-3  # gates
    baseline_lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    rl_weight: float = 1.0
    baseline_weight: float = 1.0
    baseline_hidden: int = 64
    gate_init_bias: float = 2.0
    freeze_backbone: bool = False
    # What holds the backbone (each 0 by default: the thesis's recipe). ``distill``: share of the
    # classification loss taken by distillation from the starting weights run with every layer, at
    # ``distill_temperature``; ``gate_hold_epochs``: the gates do not learn for that long (the
    # backbone first gets used to the skips they sample), then their learning rate ramps up over
    # ``gate_ramp_epochs``; ``explore_floor``: actions sampled from floor + (1 - 2 floor) p, so no
    # layer dies while training.
    distill: float = 0.0
    distill_temperature: float = 1.0
    gate_hold_epochs: float = 0.0
    gate_ramp_epochs: float = 0.0
    explore_floor: float = 0.0
    seed: int = 0
    reward: RewardConfig = field(default_factory=RewardConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def optimizer_for(model: AdaptiveViT, cfg: RLConfig, steps_per_epoch: int = 0) -> torch.optim.Optimizer:
    """AdamW over the backbone and head (``cfg.lr``; only the head when ``freeze_backbone``), the
    gates (``agent_lr``, held then ramped as ``cfg`` says, counted in steps of ``steps_per_epoch``)
    and the baselines (``baseline_lr``); each group keeps its ``base_lr``."""
    hold = (int(cfg.gate_hold_epochs * steps_per_epoch), int(cfg.gate_ramp_epochs * steps_per_epoch))
    agent = model.agent
    backbone = nn.ModuleDict({n: m for n, m in model.named_children() if n != "agent"})
    if cfg.freeze_backbone:
        for n, p in backbone.named_parameters():
            p.requires_grad_(n.startswith("head."))
    groups = [{**g, "lr": cfg.lr, "base_lr": cfg.lr} for g in param_groups(backbone, cfg.weight_decay)]
    groups += [
        {
            "params": list(agent.gates.parameters()),
            "lr": cfg.agent_lr,
            "base_lr": cfg.agent_lr,
            "weight_decay": 0.0,
            "hold": hold,
        },
        {
            "params": list(agent.baselines.parameters()),
            "lr": cfg.baseline_lr,
            "base_lr": cfg.baseline_lr,
            "weight_decay": 0.0,
        },
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=(0.9, 0.999))


def distillation(logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) at ``temperature``, times T^2 so its gradients keep their scale."""
    t = temperature
    log_student = F.log_softmax(logits.float() / t, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * t * t


def teacher_logits(teacher: AdaptiveViT | None, x: Tensor) -> Tensor | None:
    """Distillation's targets for ``x``: the frozen ``teacher`` run with every layer (None: none)."""
    if teacher is None:
        return None
    with torch.no_grad():
        return teacher(x, StaticPolicy()).logits


def policy_forward(model: AdaptiveViT, x: Tensor, policy: GatePolicy):
    """The forward of a training step: the model under the sampling ``policy``, the log-probabilities
    of its actions (B, L) and the baselines' estimates (B, L) on the CLS tokens the gates saw."""
    out = model(x, policy)
    log_probs = torch.stack(policy.log_probs, dim=1)  # (B, L)
    cls = torch.stack(policy.cls, dim=1)  # (B, L, D)
    base = torch.stack([model.agent.baseline(j, cls[:, j]) for j in range(model.depth)], dim=1)  # (B, L)
    return out, log_probs, base


class PolicyForward(nn.Module):
    """``policy_forward`` as a module, for DistributedDataParallel: it reduces the gradients of the
    parameters used in the forward of the module it wraps, and the gates and the baselines are used
    outside the model's own forward (in the log-probabilities and the baselines' estimates)."""

    def __init__(self, model: AdaptiveViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, policy: GatePolicy):
        return policy_forward(self.model, x, policy)


def rl_step(
    model: AdaptiveViT,
    x,
    y,
    cfg: RLConfig,
    thresholds=0.5,
    teacher_logits: Tensor | None = None,
    *,
    net: nn.Module | None = None,
    moments=batch_moments,
) -> tuple[torch.Tensor, dict]:
    """One REINFORCE + cross-entropy step's loss and its statistics. Negative ``thresholds``
    (scalar, (L,) or (B, L)) remove layers; the other gates sample their actions. With
    ``teacher_logits``, ``cfg.distill`` of the classification loss is distillation from them.
    Under torchrun: ``net`` is ``PolicyForward(model)`` under DistributedDataParallel, and
    ``moments`` those of the global batch (``Dist.moments``), for the whitening."""
    policy = GatePolicy(model.agent, thresholds, sample=True, floor=cfg.explore_floor)
    out, log_probs, base = policy_forward(model, x, policy) if net is None else net(x, policy)
    ce = F.cross_entropy(out.logits.float(), y, label_smoothing=cfg.label_smoothing)
    cls_loss = ce
    if teacher_logits is not None and cfg.distill > 0:
        kd = distillation(out.logits, teacher_logits, cfg.distill_temperature)
        cls_loss = (1 - cfg.distill) * ce + cfg.distill * kd
    correct = out.logits.argmax(-1) == y  # (B,)
    reward = rewards(correct, out.executed, cfg.reward)  # (B,)
    returns = whiten(discounted_returns(reward, model.depth, cfg.reward.gamma), moments)  # (B, L)
    pl, bl = reinforce_losses(log_probs, returns, base)
    loss = cls_loss + cfg.rl_weight * pl + cfg.baseline_weight * bl
    stats = {
        "ce": ce.item(),
        "baseline": bl.item(),
        "correct": int(correct.sum()),
        "layers": out.executed.float().sum(1).mean().item(),
        "reward": reward.mean().item(),
    }
    return loss, stats
