"""Analytic FLOPs of one image through the adaptive ViT: 2 x the multiply-adds of its matrix products.

Counted: the patch embedding (a p x p convolution per patch), per block the qkv and output
projections, the attention scores (Q K^T) and the weighted sum of values (A V), the two MLP
layers; one RL gate (a linear D -> 1 on the CLS token) per evaluated gate; the head (a linear
D -> classes on the CLS token). Not counted: biases, layer norms, softmax, GELU, residual adds,
the sigmoid of a gate, and the row compaction (element-wise work or copies, a few percent of the
total at these widths). The figures are exact for the products they count, so ratios between
policies (static vs. a point) are what they are for: ``ideal speedup = static / point``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from skipvit.model.config import ViTConfig


def patch_embed_flops(cfg: ViTConfig) -> int:
    """Conv C -> D with a p x p kernel at every one of the N patches."""
    macs = cfg.num_patches * cfg.dim * cfg.in_channels * cfg.patch_size**2
    return 2 * macs


def block_flops(cfg: ViTConfig) -> int:
    """One pre-norm block over T = N + 1 tokens (N + 2 with a distillation token) of width D
    (H heads of D/H: H * T * T * D/H = T^2 D)."""
    t, d = cfg.num_tokens, cfg.dim
    hidden = cfg.mlp_hidden
    qkv = t * d * 3 * d
    scores = t * t * d  # Q K^T over all heads
    weighted = t * t * d  # A V over all heads
    proj = t * d * d
    mlp = t * d * hidden + t * hidden * d
    return 2 * (qkv + scores + weighted + proj + mlp)


def gate_flops(cfg: ViTConfig) -> int:
    """One RL gate: linear D -> 1 on the CLS token."""
    return 2 * cfg.dim


def head_flops(cfg: ViTConfig) -> int:
    """The classifier: linear D -> classes on the CLS token (and DeiT's second head on its
    distillation token)."""
    return 2 * cfg.dim * cfg.num_classes * (2 if cfg.distill_head else 1)


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one image: embedding + layers run x block + gates evaluated x gate + head."""

    embed: int
    blocks: float
    gates: float
    head: int

    @property
    def total(self) -> float:
        return self.embed + self.blocks + self.gates + self.head

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


def forward_flops(cfg: ViTConfig, layers_run: float, gates_evaluated: float = 0.0) -> FlopCount:
    """FLOPs of one image that runs ``layers_run`` blocks (a mean is fine) and evaluates
    ``gates_evaluated`` gates. A static forward is ``forward_flops(cfg, cfg.depth)``."""
    if layers_run < 0 or gates_evaluated < 0:
        raise ValueError("layers_run and gates_evaluated must be >= 0")
    return FlopCount(
        embed=patch_embed_flops(cfg),
        blocks=layers_run * block_flops(cfg),
        gates=gates_evaluated * gate_flops(cfg),
        head=head_flops(cfg),
    )
