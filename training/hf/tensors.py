"""Weight names and layouts: a transformers ViT / DeiT checkpoint <-> ``model.vit.AdaptiveViT``.

The checkpoint's names are the ones ``save_pretrained`` writes (and the Hub's files hold), with
``{p}`` the model's prefix (``vit`` or ``deit``):

| transformers | here |
|---|---|
| {p}.embeddings.patch_embeddings.projection | patch_embed.proj |
| {p}.embeddings.cls_token, .distillation_token | cls_token, dist_token |
| {p}.embeddings.position_embeddings | pos_embed |
| {p}.encoder.layer.{j}.layernorm_before / _after | blocks.{j}.norm1 / norm2 |
| ...attention.attention.query, key, value | blocks.{j}.attn.qkv (stacked q; k; v along the rows) |
| ...attention.output.dense | blocks.{j}.attn.proj |
| ...intermediate.dense, output.dense | blocks.{j}.mlp.fc1, fc2 |
| {p}.layernorm | norm |
| classifier or cls_classifier, distillation_classifier | head, head_dist |

Both sides split each head's query, key and value the same way (heads major, then the head's
width), so stacking the three projections is the whole translation. A checkpoint's pooler and
mask token are not used by the classifier classes and are left out (and named in the notes).
"""

from __future__ import annotations

import torch
from torch import Tensor

from skipvit.model.config import ViTConfig

LAYER = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
QKV = ("query", "key", "value")
UNUSED = ("pooler.", "embeddings.mask_token")  # under the prefix: not read by the classifier classes


class TensorError(ValueError):
    """Checkpoint tensors that do not fit the config they came with."""


def _top(prefix: str, cfg: ViTConfig) -> dict[str, str]:
    """Names outside the layers: transformers -> here."""
    names = {
        f"{prefix}.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        f"{prefix}.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        f"{prefix}.embeddings.cls_token": "cls_token",
        f"{prefix}.embeddings.position_embeddings": "pos_embed",
        f"{prefix}.layernorm.weight": "norm.weight",
        f"{prefix}.layernorm.bias": "norm.bias",
    }
    if cfg.distill_token:
        names[f"{prefix}.embeddings.distillation_token"] = "dist_token"
    head = "cls_classifier" if cfg.distill_head else "classifier"
    names |= {f"{head}.weight": "head.weight", f"{head}.bias": "head.bias"}
    if cfg.distill_head:
        names |= {
            "distillation_classifier.weight": "head_dist.weight",
            "distillation_classifier.bias": "head_dist.bias",
        }
    return names


def _bias_names(cfg: ViTConfig) -> tuple[str, ...]:
    return ("weight", "bias") if cfg.qkv_bias else ("weight",)


def from_hf(tensors: dict[str, Tensor], cfg: ViTConfig, prefix: str) -> tuple[dict[str, Tensor], list[str]]:
    """The state of ``AdaptiveViT(cfg)`` from a checkpoint's tensors, and notes on what was left out.
    A tensor missing, or one the classifier would read that has no place here, is refused."""
    pending = dict(tensors)
    state: dict[str, Tensor] = {}

    def take(name: str) -> Tensor:
        if name not in pending:
            raise TensorError(
                f"the checkpoint lacks {name}, which the config implies; Hint: re-save the model "
                "with save_pretrained (checkpoints of other layouts are not supported)"
            )
        return pending.pop(name)

    for theirs, ours in _top(prefix, cfg).items():
        state[ours] = take(theirs)
    for j in range(cfg.depth):
        base = f"{prefix}.encoder.layer.{j}."
        for theirs, ours in LAYER.items():
            for kind in ("weight", "bias"):
                state[f"blocks.{j}.{ours}.{kind}"] = take(f"{base}{theirs}.{kind}")
        for kind in _bias_names(cfg):
            parts = [take(f"{base}attention.attention.{q}.{kind}") for q in QKV]
            state[f"blocks.{j}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)  # (3D, D) or (3D,)
    unused = sorted(k for k in pending if k.startswith(tuple(f"{prefix}.{u}" for u in UNUSED)))
    rest = sorted(set(pending) - set(unused))
    if rest:
        raise TensorError(
            f"the checkpoint holds {len(rest)} tensors a {prefix} classifier of this config does not "
            f"use, e.g. {rest[0]}; Hint: only the layouts of ViTForImageClassification and "
            "DeiTForImageClassification(WithTeacher) are supported (qkv_bias must match the weights)"
        )
    notes = (
        [f"left out {len(unused)} tensors the classifier does not use ({', '.join(unused)})"]
        if unused
        else []
    )
    return state, notes


def to_hf(state: dict[str, Tensor], cfg: ViTConfig) -> dict[str, Tensor]:
    """The checkpoint tensors of the transformers model that ``hf_config(cfg)`` describes. The
    backbone only: an RL agent or exit heads in ``state`` are not part of that model. A model with
    shared layers writes its one block once per layer."""
    prefix = "deit" if cfg.distill_token else "vit"
    out = {theirs: state[ours] for theirs, ours in _top(prefix, cfg).items()}
    for j in range(cfg.depth):
        src = "blocks.0." if cfg.shared_layers else f"blocks.{j}."
        base = f"{prefix}.encoder.layer.{j}."
        for theirs, ours in LAYER.items():
            for kind in ("weight", "bias"):
                out[f"{base}{theirs}.{kind}"] = state[f"{src}{ours}.{kind}"]
        for kind in _bias_names(cfg):
            for q, part in zip(QKV, state[f"{src}attn.qkv.{kind}"].chunk(3, dim=0), strict=True):
                out[f"{base}attention.attention.{q}.{kind}"] = part
    return {k: v.detach().contiguous().clone() for k, v in out.items()}
