"""Frozen architecture config for the adaptive ViT (flows down into every component).

The fields after ``shared_layers`` describe ViTs that this project did not train itself (a Hugging
Face checkpoint brought in by ``skipvit import hf``): bias on the query/key/value projection, the
LayerNorm epsilon, the MLP's activation and explicit width, and DeiT's distillation token with its
own head. Each defaults to what the project's own models have always been, and ``to_dict`` leaves a
field out while it holds its default. So a bundle.json or a training checkpoint written before
these fields existed reads back as the same config, and a config written now for such a model is
byte for byte what it was before: a ``--resume`` compares the saved settings with ``to_dict`` and
sees no change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# MLP activations, by the names bundle.json records (model.vit maps them to functions)
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "relu", "silu")

# Fields left out of ``to_dict`` while they hold their defaults (see the module docstring).
OPTIONAL_FIELDS = ("qkv_bias", "ln_eps", "activation", "mlp_dim", "distill_token", "distill_head")


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 28
    in_channels: int = 1
    patch_size: int = 4
    dim: int = 96
    depth: int = 9
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    attn_dropout: float = 0.0
    num_classes: int = 10
    shared_layers: bool = False  # UViT: one block's parameters reused at every layer
    qkv_bias: bool = True  # bias on the query/key/value projection
    ln_eps: float = 1e-5  # epsilon of every LayerNorm (torch's default)
    activation: str = "gelu"  # the MLP's activation: one of ACTIVATIONS ("gelu" is the exact erf form)
    mlp_dim: int | None = None  # the MLP's hidden width; None: int(dim * mlp_ratio)
    distill_token: bool = False  # DeiT: a distillation token after CLS (position 1)
    distill_head: bool = False  # DeiT with teacher: a head on that token, its logits averaged with CLS's

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}; "
                "Hint: pick a patch size that divides the image size."
            )
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        for name in ("image_size", "in_channels", "patch_size", "dim", "depth", "heads", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.attn_dropout < 1.0:
            raise ValueError("dropout rates must lie in [0, 1)")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation {self.activation!r} is not supported; Hint: use one of {', '.join(ACTIVATIONS)}"
            )
        if self.mlp_dim is not None and self.mlp_dim < 1:
            raise ValueError(f"mlp_dim must be >= 1 (or null for dim * mlp_ratio), got {self.mlp_dim}")
        if not self.ln_eps > 0:
            raise ValueError(f"ln_eps must be > 0, got {self.ln_eps}")
        if self.distill_head and not self.distill_token:
            raise ValueError("distill_head needs distill_token; Hint: set both, or neither")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_prefix_tokens(self) -> int:
        """The tokens before the patches: CLS, and DeiT's distillation token where there is one."""
        return 2 if self.distill_token else 1

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.num_prefix_tokens

    @property
    def mlp_hidden(self) -> int:
        """The MLP's hidden width."""
        return self.mlp_dim if self.mlp_dim is not None else int(self.dim * self.mlp_ratio)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        defaults = {f.name: f.default for f in fields(self)}
        for name in OPTIONAL_FIELDS:
            if d[name] == defaults[name]:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTConfig:
        """The config ``to_dict`` wrote; a field it lacks takes its default (older bundles and
        checkpoints lack every field of ``OPTIONAL_FIELDS``)."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ViTConfig keys: {sorted(unknown)}")
        return cls(**data)
