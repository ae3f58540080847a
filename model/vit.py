"""Adaptive-depth Vision Transformer.

File order follows timm: components -> model -> init -> registry. The per-layer loop in
``AdaptiveViT.forward_features`` is explicit: an ``ExecutionPolicy`` decides per row before
every layer, the rows that run are compacted (``kernels.compact_rows``), pass through the block
and are scattered back; skipped rows keep their hidden state; exited rows are answered at once.

Two compaction modes (``compaction=``; ``kernels`` has the contracts):

- ``exact`` (default, and the oracle): each layer computes exactly the R rows that run. R is a
  shape, so the host reads the device every layer: "does any row exit?" and "how many rows
  run?", plus the exiting rows' indices when some exit. On a GPU that is two or three syncs
  per layer, each one idling the device while the host catches up.
- ``fixed``: each layer computes a fixed number of slots (``capacity``, per layer or one for
  all, default B); the run mask, the count and the exit bookkeeping stay on the device.
  Exits are ``torch.where`` updates; a row answered by the model's head is answered at the end,
  from its hidden state, which no longer changes once it exited; a policy with exit heads of
  its own (``exit_logits``) is asked for every row at every layer, and its answer is kept for
  the rows that exit there. One sync per forward remains:
  the overflow check (did any layer have more running rows than its capacity?), taken at the
  end. On overflow the forward is rerun in exact mode from the same embedding, so the result
  never depends on the capacity. ``capacity < B`` is where the savings are (fewer rows through
  each block); a caller such as the serving engine can pass a running estimate, e.g. from
  ``ForwardOutput.executed.sum(0)`` of recent batches.

On the CPU, in inference (no autograd), a block runs a batch of more than twice
``cpu_chunk_tokens`` token rows (images x tokens) in equal chunks of at most that many: each
chunk's activations stay in cache (``skipvit bench model --unchunked`` measures the gain against
whole batches). Each image is computed by the same arithmetic either way; only the matrix shapes
handed to the BLAS change. ``None`` turns it off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skipvit.kernels import compact_rows, compact_rows_fixed, scatter_rows, scatter_rows_fixed
from skipvit.model.config import ViTConfig
from skipvit.model.policy import EXIT, RUN, ExecutionPolicy, StaticPolicy

CPU_CHUNK_TOKENS = 2048  # token rows per chunk of a block on the CPU (module docstring)

# ---------------------------------------------------------------- components


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, C, H, W)
        x = self.proj(x)  # (B, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


class Attention(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.attn_dropout = cfg.attn_dropout
        self.proj_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, T, D)
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads)  # (B, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, Dh)
        p = self.attn_dropout if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, T, Dh)
        x = x.transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return self.proj_drop(self.proj(x))


def quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


# model.config.ACTIVATIONS -> function ("gelu" is exact, "gelu_tanh" the tanh approximation)
ACTIVATION_FNS = {
    "gelu": F.gelu,
    "gelu_tanh": partial(F.gelu, approximate="tanh"),
    "quick_gelu": quick_gelu,
    "relu": F.relu,
    "silu": F.silu,
}


class Mlp(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_hidden)
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.dim)
        self.act = ACTIVATION_FNS[cfg.activation]
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D) -> (B, T, D)
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# ---------------------------------------------------------------- model


@dataclass
class ForwardOutput:
    logits: Tensor  # (B, C)
    executed: Tensor  # (B, L) bool: layer j ran for row b
    exit_layer: Tensor  # (B,) int64: layers passed before the answer (L when the final head answered)

    @property
    def layers_executed(self) -> Tensor:  # (B,)
        return self.executed.sum(dim=1)


class AdaptiveViT(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        # DeiT's distillation token (position 1), only where the config has one: the state of
        # every other model keeps exactly the names it always had.
        self.dist_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.distill_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.dim))
        self.pos_drop = nn.Dropout(cfg.dropout)
        if cfg.shared_layers:
            shared = Block(cfg)
            self.blocks = nn.ModuleList([shared])
        else:
            self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self.head_dist = nn.Linear(cfg.dim, cfg.num_classes) if cfg.distill_head else None
        init_weights(self)
        self.agent: nn.Module | None = None  # RL sub-agents (model.gates.SkipAgent), when attached
        self.compaction = "exact"  # default for forward(): "exact" or "fixed" (module docstring)
        self.capacity: int | Sequence[int] | None = None  # default slots per layer in fixed mode (None: B)
        self.cpu_chunk_tokens: int | None = CPU_CHUNK_TOKENS  # module docstring; None: one piece

    def attach_agent(self, agent: nn.Module) -> None:
        self.agent = agent

    @property
    def depth(self) -> int:
        return self.cfg.depth

    def block(self, j: int) -> Block:
        return self.blocks[0] if self.cfg.shared_layers else self.blocks[j]

    def run_block(self, j: int, x: Tensor) -> Tensor:  # (R, T, D) -> (R, T, D)
        """Layer ``j`` on ``x``; on the CPU in inference, in chunks of ~``cpu_chunk_tokens`` token rows."""
        block = self.block(j)
        if self.cpu_chunk_tokens is None or x.device.type != "cpu" or torch.is_grad_enabled():
            return block(x)
        per = max(1, self.cpu_chunk_tokens // x.shape[1])  # images per chunk, at most
        if x.shape[0] <= 2 * per:  # two chunks or fewer: the whole batch measured as fast
            return block(x)
        pieces = -(-x.shape[0] // per)
        return torch.cat([block(c) for c in x.split(-(-x.shape[0] // pieces))])  # equal chunks

    def embed(self, x: Tensor) -> Tensor:  # x: (B, C, H, W)
        h = self.patch_embed(x)  # (B, N, D)
        prefix = [self.cls_token.expand(h.shape[0], -1, -1)]  # (B, 1, D)
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(h.shape[0], -1, -1))  # (B, 1, D)
        h = torch.cat([*prefix, h], dim=1) + self.pos_embed  # (B, T, D)
        return self.pos_drop(h)

    def forward_head(self, h: Tensor) -> Tensor:  # h: (B, T, D) -> (B, C)
        logits = self.head(self.norm(h[:, 0]))  # (B, C)
        if self.head_dist is None:
            return logits
        # DeiT with teacher: the mean of the CLS head's and the distillation head's logits
        return (logits + self.head_dist(self.norm(h[:, 1]))) / 2

    def forward_features(
        self,
        x: Tensor,
        policy: ExecutionPolicy | None = None,
        *,
        compaction: str | None = None,
        capacity: int | Sequence[int] | None = None,
    ):
        """Run the per-layer loop. Returns (h, executed, exit_layer, exit_logits, exited).

        ``compaction`` is "exact" or "fixed" (default ``self.compaction``); ``capacity`` is the
        fixed mode's slots per layer, one int or one per layer (default ``self.capacity``, else B).
        """
        policy = policy or StaticPolicy()
        mode = compaction or self.compaction
        if mode not in ("exact", "fixed"):
            raise ValueError(f"compaction={mode!r}: expected 'exact' or 'fixed'")
        h = self.embed(x)  # (B, T, D)
        if mode == "fixed" and not policy.always_runs:
            caps = self.capacities(h.shape[0], self.capacity if capacity is None else capacity)
            out = self._layers_fixed(h, policy, caps)
            if out is not None:
                return out
            # Overflow: some layer had more running rows than slots. Rerun exactly, same embedding.
        return self._layers_exact(h, policy)

    def capacities(self, batch: int, capacity: int | Sequence[int] | None) -> list[int]:
        """Slots per layer for the fixed mode: ``capacity`` (one int or one per layer) capped at B."""
        caps = [batch] * self.cfg.depth if capacity is None else capacity
        if isinstance(caps, int):
            caps = [caps] * self.cfg.depth
        caps = [int(c) for c in caps]
        if len(caps) != self.cfg.depth or min(caps, default=0) < 0:
            raise ValueError(
                f"capacity={capacity!r}: expected a non-negative int or {self.cfg.depth} of them (one per layer)"
            )
        return [min(c, batch) for c in caps]

    def _layers_exact(self, h: Tensor, policy: ExecutionPolicy):
        b, depth = h.shape[0], self.cfg.depth
        exit_layer = torch.full((b,), depth, dtype=torch.long, device=h.device)
        exit_logits = torch.zeros(b, self.cfg.num_classes, dtype=h.dtype, device=h.device)
        alive = torch.ones(b, dtype=torch.bool, device=h.device)
        policy.begin(h)
        if policy.always_runs:
            for j in range(depth):
                h = self.run_block(j, h)
            executed = torch.ones(b, depth, dtype=torch.bool, device=h.device)
            return h, executed, exit_layer, exit_logits, ~alive
        runs = []  # (B,) bool per layer, stacked once at the end
        for j in range(depth):
            if policy.may_exit:
                decision = policy.decide(j, h, alive)  # (B,) int8
                exiting = alive & (decision == EXIT)
                if bool(exiting.any()):  # host sync
                    rows = exiting.nonzero().squeeze(1)  # (E,), host sync
                    logits = policy.exit_logits(j, h, rows)
                    if logits is None:
                        logits = self.forward_head(h.index_select(0, rows))  # (E, C)
                    exit_logits[rows] = logits.to(exit_logits.dtype)
                    exit_layer[rows] = j
                    alive = alive & ~exiting
                run = alive & (decision == RUN)  # (B,)
            else:  # skip-only policy (the RL gates): every row stays alive
                run = policy.run_mask(j, h, alive)  # (B,)
            runs.append(run)
            rows_h, idx = compact_rows(h, run)  # (R, T, D), (R,); host sync (R); h itself when R = B
            if rows_h.shape[0]:
                h = scatter_rows(h, idx, self.run_block(j, rows_h))
        return h, torch.stack(runs, dim=1), exit_layer, exit_logits, ~alive

    def _layers_fixed(self, h: Tensor, policy: ExecutionPolicy, caps: list[int]):
        """The loop with ``caps[j]`` slots at layer j and no sync until the end; None on overflow."""
        b, depth = h.shape[0], self.cfg.depth
        executed = torch.zeros(b, depth, dtype=torch.bool, device=h.device)
        exit_layer = torch.full((b,), depth, dtype=torch.long, device=h.device)
        exit_logits = torch.zeros(b, self.cfg.num_classes, dtype=h.dtype, device=h.device)
        alive = torch.ones(b, dtype=torch.bool, device=h.device)
        head_exit = torch.zeros(b, dtype=torch.bool, device=h.device)  # exited, answered by the model head
        overflow = torch.zeros((), dtype=torch.bool, device=h.device)
        every = torch.arange(b, device=h.device)  # (B,)
        policy.begin(h)
        for j in range(depth):
            decision = policy.decide(j, h, alive)  # (B,) int8
            exiting = alive & (decision == EXIT)  # (B,)
            exit_layer = torch.where(exiting, j, exit_layer)
            logits = policy.exit_logits(j, h, every)  # (B, C) or None; kept for the exiting rows
            if logits is None:
                head_exit = head_exit | exiting
            else:
                exit_logits = torch.where(exiting[:, None], logits.to(exit_logits.dtype), exit_logits)
            alive = alive & ~exiting
            run = alive & (decision == RUN)  # (B,)
            executed[:, j] = run
            rows_h, idx, count = compact_rows_fixed(h, run, caps[j])  # (S, T, D), (S,), ()
            overflow = overflow | (count > caps[j])
            if caps[j]:
                h = scatter_rows_fixed(h, idx, self.run_block(j, rows_h))
        if bool(overflow):  # the one host sync of the forward
            return None
        # An exited row never runs again, so its final hidden state is the one it exited with.
        head = self.forward_head(h).to(exit_logits.dtype)  # (B, C)
        exit_logits = torch.where(head_exit[:, None], head, exit_logits)
        return h, executed, exit_layer, exit_logits, ~alive

    def forward(
        self,
        x: Tensor,
        policy: ExecutionPolicy | None = None,
        *,
        compaction: str | None = None,
        capacity: int | Sequence[int] | None = None,
    ) -> ForwardOutput:
        h, executed, exit_layer, exit_logits, exited = self.forward_features(
            x, policy, compaction=compaction, capacity=capacity
        )
        logits = self.forward_head(h)  # (B, C)
        logits = torch.where(exited[:, None], exit_logits.to(logits.dtype), logits)
        return ForwardOutput(logits=logits, executed=executed, exit_layer=exit_layer)


# ---------------------------------------------------------------- init


def init_weights(model: AdaptiveViT) -> None:
    nn.init.trunc_normal_(model.pos_embed, std=0.02)
    nn.init.trunc_normal_(model.cls_token, std=0.02)
    if model.dist_token is not None:
        nn.init.trunc_normal_(model.dist_token, std=0.02)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            nn.init.trunc_normal_(m.weight, std=math.sqrt(1.0 / fan_in))
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------- registry

PRESETS: dict[str, dict] = {
    # The shipped default: 9 layers on 28x28 greyscale (Fashion-MNIST), CPU-trainable.
    "fmnist-9": dict(image_size=28, in_channels=1, patch_size=4, dim=96, depth=9, heads=4, mlp_ratio=2.0),
    # A tiny model for tests.
    "tiny": dict(image_size=16, in_channels=1, patch_size=4, dim=32, depth=4, heads=2, mlp_ratio=2.0),
}


def build_model(cfg: ViTConfig) -> AdaptiveViT:
    return AdaptiveViT(cfg)
